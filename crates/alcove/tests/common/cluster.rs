//! A cluster for the tests: Debian's PostgreSQL 15 in a temporary directory,
//! `alcove serve` daemons each in a network namespace of the test's own, and
//! Debian's HAProxy in front of them.
//!
//! The network: a bridge in the host's namespace holds `10.213.X.1/24` (X
//! picked per run among those this host does not use); each daemon's
//! namespace has one end of a veth pair with `10.213.X.(10+i)/24`, the other
//! end on the bridge. PostgreSQL and HAProxy listen on `10.213.X.1`, so a
//! daemon reaches the database only over its own link (which
//! [`Netns::cut`] takes down), and the test reaches everything from the
//! host's namespace. Every address is the run's own, so the ports are fixed.
//!
//! Daemons enter their namespace with `nsenter --net=` (util-linux) rather
//! than `ip netns exec`, which also remounts /sys for the namespace and so
//! hides the cgroup hierarchies under /sys/fs/cgroup that the daemon's
//! sandboxes need.

use super::daemon::{Daemon, Reply};
use super::ALCOVE;
use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Debian's PostgreSQL 15 programs (postgresql-15).
pub const PG_BIN: &str = "/usr/lib/postgresql/15/bin";
/// Debian's HAProxy (haproxy).
pub const HAPROXY: &str = "/usr/sbin/haproxy";
/// The port every daemon listens on, in its own namespace.
pub const DAEMON_PORT: u16 = 8080;
/// PostgreSQL's port, on the bridge's address.
pub const PG_PORT: u16 = 5432;
/// The first balancer's port, on the bridge's address (each later one: +1).
pub const LB_PORT: u16 = 8000;

/// Whether everything a cluster test needs is here: root, PostgreSQL 15 and
/// its `postgres` user, HAProxy, `ip`, `nsenter` and `runuser`. If not, says
/// why (and fails under ALCOVE_CI=1, whose setup installs them).
pub fn cluster_or_skip(test: &str) -> bool {
    if !super::root_or_skip(test) {
        return false;
    }
    let needs = [
        (
            format!("{PG_BIN}/postgres"),
            "needs PostgreSQL 15 (Debian's postgresql-15, which scripts/test.sh installs)",
        ),
        (
            HAPROXY.to_owned(),
            "needs HAProxy (Debian's haproxy, which scripts/test.sh installs)",
        ),
    ];
    for (path, why) in needs {
        if !Path::new(&path).exists() {
            super::skip_unprovided(test, why);
            return false;
        }
    }
    for tool in ["ip", "nsenter", "runuser"] {
        if !on_path(tool) {
            super::skip_unprovided(
                test,
                &format!("needs {tool} (iproute2, util-linux: scripts/packages.sh installs them)"),
            );
            return false;
        }
    }
    if postgres_user().is_none() {
        super::skip_unprovided(
            test,
            "needs the postgres user that Debian's postgresql-common creates",
        );
        return false;
    }
    true
}

fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
        .unwrap_or(false)
        || ["/usr/sbin", "/sbin", "/usr/bin"]
            .iter()
            .any(|d| Path::new(d).join(tool).is_file())
}

/// The uid and gid of the `postgres` user.
fn postgres_user() -> Option<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    let line = passwd.lines().find(|l| l.starts_with("postgres:"))?;
    let fields: Vec<&str> = line.split(':').collect();
    Some((fields.get(2)?.parse().ok()?, fields.get(3)?.parse().ok()?))
}

/// Runs `cmd`, which must succeed; its stdout.
fn run(cmd: &mut Command) -> String {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}): {}{}",
        out.status,
        text(&out.stderr),
        text(&out.stdout)
    );
    text(&out.stdout)
}

/// `ip ARGS`, which must succeed.
fn ip(args: &[&str]) -> String {
    run(Command::new("ip").args(args))
}

/// `ip ARGS` for teardown: whether it succeeded, quietly.
fn ip_quiet(args: &[&str]) -> bool {
    Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Whether a network interface of this name is in the host's namespace.
pub fn link_exists(name: &str) -> bool {
    Path::new("/sys/class/net").join(name).exists()
}

/// `n` random bytes from the kernel, as lowercase hex.
pub fn random_hex(n: usize) -> String {
    let mut bytes = vec![0u8; n];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .expect("read /dev/urandom");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether `pid` runs (exists and is not a zombie).
pub fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => false,
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with('Z') && !rest.starts_with('X')),
    }
}

/// The current time as Unix seconds, as the records' `started_at` has it.
pub fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

pub use super::daemon::try_http;

/// The test's own network: a bridge in the host's namespace with
/// `PREFIX.1/24`; namespaces hang off it ([`Net::netns`]). Dropping it
/// deletes the bridge.
pub struct Net {
    /// Unique to this run and this network: names its bridge, veths and namespaces.
    pub id: String,
    pub bridge: String,
    /// `10.213.X`.
    pub prefix: String,
}

impl Net {
    pub fn new() -> Net {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let pid = std::process::id();
        let id = format!(
            "{}{}",
            pid % 100_000,
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let used = ip(&["-o", "-4", "addr"]) + &ip(&["-o", "-4", "route"]);
        let start = pid % 200;
        let x = (0..200)
            .map(|k| 20 + (start + k) % 200)
            .find(|x| !used.contains(&format!("10.213.{x}.")))
            .expect("a free 10.213.X.0/24 on this host");
        let net = Net {
            bridge: format!("acb{id}"),
            prefix: format!("10.213.{x}"),
            id,
        };
        ip(&["link", "add", &net.bridge, "type", "bridge"]);
        ip(&[
            "addr",
            "add",
            &format!("{}/24", net.host()),
            "dev",
            &net.bridge,
        ]);
        ip(&["link", "set", &net.bridge, "up"]);
        net
    }

    /// The host's address on the bridge, where PostgreSQL and HAProxy listen.
    pub fn host(&self) -> String {
        format!("{}.1", self.prefix)
    }

    /// A fresh namespace with address `PREFIX.(10+i)` on the bridge.
    pub fn netns(&self, i: u8) -> Netns {
        Netns::new(self, i)
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        ip_quiet(&["link", "del", &self.bridge]);
    }
}

/// A network namespace for one daemon, linked to the [`Net`]'s bridge by a
/// veth pair; lo is up. Dropping it deletes the namespace and the veths.
pub struct Netns {
    pub name: String,
    /// Its address on the bridge (no prefix length).
    pub addr: String,
    /// The veth end on the bridge, in the host's namespace.
    pub host_veth: String,
}

impl Netns {
    fn new(net: &Net, i: u8) -> Netns {
        let ns = Netns {
            name: format!("alcove-test-{}-{i}", net.id),
            addr: format!("{}.{}", net.prefix, 10 + u32::from(i)),
            host_veth: format!("acv{}_{i}", net.id),
        };
        let peer = format!("acp{}_{i}", net.id);
        ip(&["netns", "add", &ns.name]);
        ip(&[
            "link",
            "add",
            &ns.host_veth,
            "type",
            "veth",
            "peer",
            "name",
            &peer,
            "netns",
            &ns.name,
        ]);
        ip(&["link", "set", &ns.host_veth, "master", &net.bridge]);
        ip(&["link", "set", &ns.host_veth, "up"]);
        ip(&["-n", &ns.name, "link", "set", "lo", "up"]);
        ip(&[
            "-n",
            &ns.name,
            "addr",
            "add",
            &format!("{}/24", ns.addr),
            "dev",
            &peer,
        ]);
        ip(&["-n", &ns.name, "link", "set", &peer, "up"]);
        ns
    }

    /// Cuts the namespace off the network (its link down, on the host's side).
    pub fn cut(&self) {
        ip(&["link", "set", &self.host_veth, "down"]);
    }

    /// Joins it to the network again.
    pub fn restore(&self) {
        ip(&["link", "set", &self.host_veth, "up"]);
    }

    /// /run/netns/NAME, which `nsenter --net=` enters.
    pub fn path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.name)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting the namespace deletes the veth end in it, and so the pair.
        ip_quiet(&["netns", "del", &self.name]);
        if link_exists(&self.host_veth) {
            ip_quiet(&["link", "del", &self.host_veth]);
        }
    }
}

/// Debian's PostgreSQL 15, run as the `postgres` user (it refuses root),
/// with its data directory, socket and log in a temporary directory of its
/// own, listening on `HOST:5432`. Dropping it stops it (`-m immediate`) and
/// removes everything.
pub struct Postgres {
    pub host: String,
    pub port: u16,
    pub dir: tempfile::TempDir,
}

impl Postgres {
    /// initdb, configure for `net`, start, and create the `alcove` database.
    pub fn new(net: &Net) -> Postgres {
        let (uid, gid) = postgres_user().expect("the postgres user");
        let dir = tempfile::Builder::new()
            .prefix("alcove-pg-")
            .tempdir()
            .unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).unwrap();
        let pg = Postgres {
            host: net.host(),
            port: PG_PORT,
            dir,
        };
        std::fs::create_dir(pg.sock()).unwrap();
        std::os::unix::fs::chown(pg.sock(), Some(uid), Some(gid)).unwrap();
        pg.as_postgres(&format!("{PG_BIN}/initdb"))
            .args([
                "-A",
                "trust",
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--no-sync",
                "-D",
            ])
            .arg(pg.data())
            .output()
            .map(|out| {
                assert!(
                    out.status.success(),
                    "initdb failed: {}{}",
                    String::from_utf8_lossy(&out.stderr),
                    String::from_utf8_lossy(&out.stdout)
                )
            })
            .expect("run initdb");
        let mut conf = std::fs::OpenOptions::new()
            .append(true)
            .open(pg.data().join("postgresql.conf"))
            .unwrap();
        // Durability is not under test: no fsync keeps the tests quick.
        write!(
            conf,
            "\nlisten_addresses = '{}'\nport = {}\nunix_socket_directories = '{}'\n\
             max_connections = 400\nfsync = off\nsynchronous_commit = off\nfull_page_writes = off\n",
            pg.host,
            pg.port,
            pg.sock().display()
        )
        .unwrap();
        let mut hba = std::fs::OpenOptions::new()
            .append(true)
            .open(pg.data().join("pg_hba.conf"))
            .unwrap();
        write!(
            hba,
            "\n# Test only: any role from the test's own subnet, without a password.\n\
             host all all {}.0/24 trust\n",
            net.prefix
        )
        .unwrap();
        pg.start();
        pg.psql("postgres", "CREATE DATABASE alcove");
        pg
    }

    pub fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn sock(&self) -> PathBuf {
        self.dir.path().join("sock")
    }

    fn log(&self) -> PathBuf {
        self.dir.path().join("postgres.log")
    }

    /// What the daemons are given: `postgres://postgres@HOST:5432/alcove`.
    pub fn url(&self) -> String {
        format!("postgres://postgres@{}:{}/alcove", self.host, self.port)
    }

    /// The end of the server's log, for messages.
    pub fn log_tail(&self) -> String {
        let bytes = std::fs::read(self.log()).unwrap_or_default();
        String::from_utf8_lossy(&bytes[bytes.len().saturating_sub(4000)..]).into_owned()
    }

    fn as_postgres(&self, program: &str) -> Command {
        let mut cmd = Command::new("runuser");
        cmd.args(["-u", "postgres", "--", program])
            .current_dir(self.dir.path())
            .stdin(Stdio::null());
        cmd
    }

    /// Starts the server on its data directory, and waits until it accepts connections.
    pub fn start(&self) {
        let out = self
            .as_postgres(&format!("{PG_BIN}/pg_ctl"))
            .arg("-D")
            .arg(self.data())
            .arg("-l")
            .arg(self.log())
            .args(["-w", "-t", "60", "start"])
            .output()
            .expect("run pg_ctl start");
        assert!(
            out.status.success(),
            "pg_ctl start failed: {}{}\n{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout),
            self.log_tail()
        );
        assert!(self.pid().is_some_and(alive), "no postmaster after start");
    }

    /// Stops the server the way an operator restarting it would (`-m fast`:
    /// sessions are disconnected) and waits until it is down.
    pub fn stop(&self) {
        let pid = self.pid();
        let out = self
            .as_postgres(&format!("{PG_BIN}/pg_ctl"))
            .arg("-D")
            .arg(self.data())
            .args(["-m", "fast", "-w", "-t", "60", "stop"])
            .output()
            .expect("run pg_ctl stop");
        assert!(
            out.status.success(),
            "pg_ctl stop failed: {}{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        if let Some(pid) = pid {
            super::wait_until("the postmaster exits", Duration::from_secs(20), || {
                !alive(pid)
            });
        }
    }

    /// The postmaster's pid, while postmaster.pid says one runs.
    pub fn pid(&self) -> Option<i32> {
        std::fs::read_to_string(self.data().join("postmaster.pid"))
            .ok()?
            .lines()
            .next()?
            .trim()
            .parse()
            .ok()
    }

    /// Runs `sql` with psql over the server's own socket; its unaligned output.
    pub fn psql(&self, db: &str, sql: &str) -> String {
        let out = self
            .as_postgres(&format!("{PG_BIN}/psql"))
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h"])
            .arg(self.sock())
            .args(["-p", &self.port.to_string(), "-d", db, "-c", sql])
            .output()
            .expect("run psql");
        assert!(
            out.status.success(),
            "psql {sql:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let pid = self.pid();
        let _ = self
            .as_postgres(&format!("{PG_BIN}/pg_ctl"))
            .arg("-D")
            .arg(self.data())
            .args(["-m", "immediate", "-w", "-t", "30", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if let Some(pid) = pid {
            // The postmaster exits after its backends; never leave it running.
            let start = Instant::now();
            while alive(pid) && start.elapsed() < Duration::from_secs(20) {
                std::thread::sleep(Duration::from_millis(20));
            }
            if alive(pid) {
                // SAFETY: kill on the pid of the postmaster this fixture started.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
}

/// One `alcove serve` in its own network namespace, on the shared store,
/// with the cluster's token and secrets key. The [`Daemon`] inside is the one
/// the other daemon tests use (requests, CLI, `kill9`, kill on drop).
pub struct ClusterDaemon {
    pub daemon: Daemon,
    pub node: String,
    /// `serve` and everything after it, to start it again the same way.
    pub args: Vec<String>,
    pub ns: Netns,
}

impl std::ops::Deref for ClusterDaemon {
    type Target = Daemon;
    fn deref(&self) -> &Daemon {
        &self.daemon
    }
}

impl std::ops::DerefMut for ClusterDaemon {
    fn deref_mut(&mut self) -> &mut Daemon {
        &mut self.daemon
    }
}

impl ClusterDaemon {
    /// Starts `alcove ARGS` inside `ns` and returns at once (see [`Self::wait_ready`]).
    fn spawn(ns: &Netns, args: &[String], data: &Path, token: &str) -> Daemon {
        let mut child = Command::new("nsenter")
            .arg(format!("--net={}", ns.path().display()))
            .arg("--")
            .arg(ALCOVE)
            .args(args)
            .env_remove("ALCOVE_TOKEN")
            .env_remove("ALCOVE_STORE")
            .env_remove("ALCOVE_NODE")
            .env_remove("ALCOVE_SECRETS_KEY")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start alcove serve in its namespace");
        // The same capture as Daemon's: every line of stderr into `log`.
        let log = Arc::new(Mutex::new(String::new()));
        let sink = Arc::clone(&log);
        let lines = BufReader::new(child.stderr.take().unwrap()).lines();
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                sink.lock().unwrap().push_str(&(line + "\n"));
            }
        });
        Daemon {
            child,
            addr: format!("{}:{DAEMON_PORT}", ns.addr),
            data: data.to_owned(),
            log,
            token: Some(token.to_owned()),
        }
    }

    /// The daemon's pid (nsenter execs it: the child is the daemon).
    pub fn pid(&self) -> i32 {
        self.daemon.child.id() as i32
    }

    pub fn alive(&self) -> bool {
        alive(self.pid())
    }

    pub fn log(&self) -> String {
        self.daemon.log.lock().unwrap().clone()
    }

    /// A request that may fail (connection refused, no answer within `timeout`).
    pub fn try_http(
        &self,
        method: &str,
        path: &str,
        body: &[u8],
        timeout: Duration,
    ) -> Result<Reply, String> {
        let bearer = format!(
            "Bearer {}",
            self.daemon.token.as_deref().unwrap_or_default()
        );
        try_http(
            &self.daemon.addr,
            method,
            path,
            &[("authorization", &bearer)],
            body,
            timeout,
        )
    }

    /// `GET /readyz`: its status code, or 0 when the daemon does not answer.
    pub fn readyz(&self) -> (u16, Value) {
        match try_http(
            &self.daemon.addr,
            "GET",
            "/readyz",
            &[],
            b"",
            Duration::from_secs(5),
        ) {
            Ok(r) => {
                let json = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
                (r.status, json)
            }
            Err(_) => (0, Value::Null),
        }
    }

    /// Waits until `/readyz` answers 200 with this node's name; fails the
    /// test, with the daemon's log, if it exits or `limit` passes first.
    pub fn wait_ready(&self, limit: Duration) {
        let start = Instant::now();
        loop {
            assert!(
                self.alive(),
                "daemon {} exited before it was ready: {}",
                self.node,
                self.log()
            );
            let (status, json) = self.readyz();
            if status == 200 {
                self.assert_in_netns();
                assert_eq!(
                    (json["status"].as_str(), json["node"].as_str()),
                    (Some("ready"), Some(self.node.as_str())),
                    "/readyz of {}: {json}",
                    self.node
                );
                return;
            }
            assert!(
                start.elapsed() < limit,
                "daemon {} not ready after {limit:?} (last /readyz: {status} {json}): {}",
                self.node,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Asserts that the daemon runs in its namespace (not the host's).
    pub fn assert_in_netns(&self) {
        use std::os::unix::fs::MetadataExt;
        let ns = std::fs::metadata(self.ns.path()).unwrap();
        let own = std::fs::metadata(format!("/proc/{}/ns/net", self.pid())).unwrap();
        assert_eq!(
            (own.dev(), own.ino()),
            (ns.dev(), ns.ino()),
            "daemon {} is not in its namespace {}",
            self.node,
            self.ns.name
        );
    }

    /// Starts it again, the same way, in the same namespace (after `kill9`).
    pub fn restart(&mut self) {
        let data = self.daemon.data.clone();
        let token = self.daemon.token.clone().unwrap_or_default();
        let fresh = Self::spawn(&self.ns, &self.args, &data, &token);
        // The old one is dropped: killed if it still ran, and reaped.
        self.daemon = fresh;
    }
}

/// Debian's HAProxy in the foreground (`-db`) as the test's child, with a
/// configuration in a temporary directory: one frontend, a round-robin
/// backend of daemons health-checked on `GET /readyz` every 200 ms, and a
/// stats socket. Dropping it kills it by its pid.
pub struct Haproxy {
    pub child: Child,
    /// Where the frontend listens.
    pub addr: String,
    pub dir: tempfile::TempDir,
}

impl Haproxy {
    /// Starts it in front of `servers` (node name, address), and waits until
    /// every server is UP in its stats.
    pub fn start(bind: &str, servers: &[(String, String)]) -> Haproxy {
        let dir = tempfile::Builder::new()
            .prefix("alcove-haproxy-")
            .tempdir()
            .unwrap();
        let mut config = format!(
            "global\n    stats socket {}/stats.sock mode 600 level user\n    maxconn 4096\n\
             defaults\n    mode http\n    timeout connect 2s\n    timeout client 60s\n\
             \x20   timeout server 60s\n    timeout queue 10s\n    timeout http-request 10s\n\
             \x20   retries 3\n    option redispatch\n\
             frontend alcove\n    bind {bind}\n    default_backend daemons\n\
             backend daemons\n    balance roundrobin\n    option httpchk GET /readyz\n\
             \x20   default-server inter 200ms fastinter 200ms downinter 200ms rise 2 fall 2\n",
            dir.path().display()
        );
        for (name, addr) in servers {
            config.push_str(&format!("    server {name} {addr} check\n"));
        }
        let cfg = dir.path().join("haproxy.cfg");
        std::fs::write(&cfg, &config).unwrap();
        let log = std::fs::File::create(dir.path().join("haproxy.log")).unwrap();
        let child = Command::new(HAPROXY)
            .arg("-db")
            .arg("-f")
            .arg(&cfg)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start haproxy");
        let lb = Haproxy {
            child,
            addr: bind.to_owned(),
            dir,
        };
        lb.wait_up(servers.len(), Duration::from_secs(20));
        lb
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("haproxy.log")).unwrap_or_default()
    }

    /// The backend's servers and their check status (`UP`, `DOWN`, ...),
    /// from the stats socket's `show stat`.
    pub fn servers(&self) -> Vec<(String, String)> {
        let Ok(mut sock) = UnixStream::connect(self.dir.path().join("stats.sock")) else {
            return Vec::new();
        };
        let _ = sock.set_read_timeout(Some(Duration::from_secs(5)));
        if sock.write_all(b"show stat\n").is_err() {
            return Vec::new();
        }
        let mut csv = String::new();
        let _ = sock.read_to_string(&mut csv);
        let mut lines = csv.lines();
        let Some(header) = lines.next() else {
            return Vec::new();
        };
        let columns: Vec<&str> = header.trim_start_matches("# ").split(',').collect();
        let col = |name: &str| columns.iter().position(|c| *c == name);
        let (Some(px), Some(sv), Some(st)) = (col("pxname"), col("svname"), col("status")) else {
            return Vec::new();
        };
        lines
            .map(|l| l.split(',').collect::<Vec<&str>>())
            .filter(|f| {
                f.len() > st && f[px] == "daemons" && f[sv] != "BACKEND" && f[sv] != "FRONTEND"
            })
            .map(|f| (f[sv].to_owned(), f[st].to_owned()))
            .collect()
    }

    /// The servers whose health checks pass.
    pub fn servers_up(&self) -> Vec<String> {
        self.servers()
            .into_iter()
            .filter(|(_, status)| status == "UP")
            .map(|(name, _)| name)
            .collect()
    }

    /// Waits until `n` servers are UP.
    pub fn wait_up(&self, n: usize, limit: Duration) {
        let start = Instant::now();
        while self.servers_up().len() != n {
            assert!(
                start.elapsed() < limit,
                "haproxy: {n} servers not up after {limit:?}: {:?}\n{}",
                self.servers(),
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A whole cluster for one test: its network, PostgreSQL, daemons and
/// (once [`Cluster::balance`] is called) a balancer. Holds the serial lock.
/// Dropped in field order: balancer, daemons, database, network, files, lock.
pub struct Cluster {
    pub lb: Option<Haproxy>,
    pub daemons: Vec<ClusterDaemon>,
    pub pg: Postgres,
    pub net: Net,
    pub token: String,
    pub dir: tempfile::TempDir,
    lbs_started: u16,
    _serial: MutexGuard<'static, ()>,
}

impl Cluster {
    /// The network, PostgreSQL with an `alcove` database, `n` ready daemons
    /// (`n1`...) started with `extra` flags, and a balancer in front of them
    /// (when `n` > 0); `None` (having said why) when the machine lacks
    /// what it takes.
    pub fn new(test: &str, n: usize, extra: &[&str]) -> Option<Cluster> {
        if !cluster_or_skip(test) {
            return None;
        }
        let serial = super::serial();
        let dir = tempfile::Builder::new()
            .prefix("alcove-cluster-")
            .tempdir()
            .unwrap();
        let token = random_hex(16);
        let write_secret = |name: &str, text: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, format!("{text}\n")).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        };
        write_secret("token", &token);
        write_secret("secrets.key", &random_hex(32));
        let net = Net::new();
        let pg = Postgres::new(&net);
        let mut cluster = Cluster {
            lb: None,
            daemons: Vec::new(),
            pg,
            net,
            token,
            dir,
            lbs_started: 0,
            _serial: serial,
        };
        for _ in 0..n {
            cluster.spawn_daemon(extra);
        }
        for d in &cluster.daemons {
            d.wait_ready(Duration::from_secs(60));
        }
        if n > 0 {
            cluster.balance();
        }
        Some(cluster)
    }

    /// The arguments of `alcove serve` for node `name` (data dir, store,
    /// node, key, token, listen address), then `extra`.
    fn serve_args(&self, ns: &Netns, name: &str, extra: &[&str]) -> Vec<String> {
        let path = |p: PathBuf| p.to_string_lossy().into_owned();
        let mut args: Vec<String> = [
            "serve".to_owned(),
            "--listen".to_owned(),
            format!("{}:{DAEMON_PORT}", ns.addr),
            "--data-dir".to_owned(),
            path(self.dir.path().join(name)),
            "--store".to_owned(),
            self.pg.url(),
            "--node".to_owned(),
            name.to_owned(),
            "--secrets-key-file".to_owned(),
            path(self.dir.path().join("secrets.key")),
            "--token-file".to_owned(),
            path(self.dir.path().join("token")),
        ]
        .into();
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    }

    /// Starts one more daemon (`nN`) with `extra` flags and returns its
    /// index at once, ready or not (see [`ClusterDaemon::wait_ready`]).
    pub fn spawn_daemon(&mut self, extra: &[&str]) -> usize {
        let i = self.daemons.len() + 1;
        let node = format!("n{i}");
        let ns = self.net.netns(i as u8);
        let args = self.serve_args(&ns, &node, extra);
        let daemon = ClusterDaemon::spawn(&ns, &args, &self.dir.path().join(&node), &self.token);
        self.daemons.push(ClusterDaemon {
            daemon,
            node,
            args,
            ns,
        });
        i - 1
    }

    /// Starts one more daemon and waits until it is ready; its index.
    pub fn add_daemon(&mut self, extra: &[&str]) -> usize {
        let i = self.spawn_daemon(extra);
        self.daemons[i].wait_ready(Duration::from_secs(60));
        i
    }

    /// (Re)starts the balancer in front of every daemon, on a port it has
    /// not used (the old one is stopped first), and waits until all are UP.
    pub fn balance(&mut self) {
        self.lb = None;
        let servers: Vec<(String, String)> = self
            .daemons
            .iter()
            .map(|d| (d.node.clone(), d.daemon.addr.clone()))
            .collect();
        let bind = format!("{}:{}", self.net.host(), LB_PORT + self.lbs_started);
        self.lbs_started += 1;
        self.lb = Some(Haproxy::start(&bind, &servers));
    }

    pub fn lb(&self) -> &Haproxy {
        self.lb.as_ref().expect("the cluster has a balancer")
    }

    pub fn daemon(&self, node: &str) -> &ClusterDaemon {
        self.daemons
            .iter()
            .find(|d| d.node == node)
            .unwrap_or_else(|| panic!("no daemon {node}"))
    }

    fn bearer(&self) -> String {
        format!("Bearer {}", self.token)
    }

    /// A request through the balancer that may fail (after `timeout`).
    pub fn lb_try(
        &self,
        method: &str,
        path: &str,
        body: &[u8],
        timeout: Duration,
    ) -> Result<Reply, String> {
        try_http(
            &self.lb().addr,
            method,
            path,
            &[("authorization", &self.bearer())],
            body,
            timeout,
        )
    }

    /// A request through the balancer that must be answered (within 60 s).
    pub fn lb_http(&self, method: &str, path: &str, body: &[u8]) -> Reply {
        self.lb_try(method, path, body, Duration::from_secs(60))
            .unwrap_or_else(|e| panic!("{method} {path} through the balancer: {e}"))
    }

    /// Everything the cluster made, to check it is gone after the drop:
    /// see [`Leftovers::assert_gone`].
    pub fn leftovers(&self) -> Leftovers {
        Leftovers {
            netns: self.daemons.iter().map(|d| d.ns.path()).collect(),
            links: self
                .daemons
                .iter()
                .map(|d| d.ns.host_veth.clone())
                .chain([self.net.bridge.clone()])
                .collect(),
            pids: self
                .daemons
                .iter()
                .map(|d| d.pid())
                .chain(self.pg.pid())
                .chain(self.lb.as_ref().map(|l| l.pid()))
                .collect(),
            dirs: [self.dir.path().to_owned(), self.pg.dir.path().to_owned()]
                .into_iter()
                .chain(self.lb.as_ref().map(|l| l.dir.path().to_owned()))
                .collect(),
        }
    }

    /// Drops the cluster and asserts it left nothing behind.
    pub fn tear_down(self) {
        let left = self.leftovers();
        drop(self);
        left.assert_gone();
    }
}

impl Drop for Cluster {
    /// Stops the daemons the way an operator would (SIGTERM), giving them a
    /// few seconds; the fields' drops then kill what is left.
    fn drop(&mut self) {
        for d in &self.daemons {
            if d.alive() {
                // SAFETY: kill on the pid of a daemon this fixture started and has not reaped.
                unsafe { libc::kill(d.pid(), libc::SIGTERM) };
            }
        }
        let start = Instant::now();
        for d in &mut self.daemons {
            while start.elapsed() < Duration::from_secs(5) {
                if !matches!(d.daemon.child.try_wait(), Ok(None)) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

/// What a cluster made: namespaces, links, processes, directories, and the
/// sandbox cgroups its daemons named after their pids (`sb-PID-...`).
#[derive(Debug)]
pub struct Leftovers {
    pub netns: Vec<PathBuf>,
    pub links: Vec<String>,
    pub pids: Vec<i32>,
    pub dirs: Vec<PathBuf>,
}

impl Leftovers {
    pub fn assert_gone(&self) {
        let cgroups: Vec<PathBuf> = super::alcove_cgroups()
            .into_iter()
            .filter(|c| {
                let name = c.file_name().unwrap_or_default().to_string_lossy();
                self.pids
                    .iter()
                    .any(|pid| name.starts_with(&format!("sb-{pid}-")))
            })
            .collect();
        assert!(
            cgroups.is_empty(),
            "the daemons' cgroups remain: {cgroups:?}"
        );
        for ns in &self.netns {
            assert!(!ns.exists(), "namespace {} remains", ns.display());
        }
        for link in &self.links {
            assert!(!link_exists(link), "link {link} remains");
        }
        for &pid in &self.pids {
            assert!(!alive(pid), "process {pid} remains");
        }
        for dir in &self.dirs {
            assert!(!dir.exists(), "{} remains", dir.display());
        }
    }
}
