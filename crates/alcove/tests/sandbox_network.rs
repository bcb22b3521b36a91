//! Outbound agent sandboxes (`net: outbound`, `allow_out`) end to end: the
//! test builds a small world on this machine, starts a daemon that resolves
//! sandboxes' names with the world's DNS server, runs
//! clients/python/tests/e2e_network.py against it through the SDK, and then
//! checks that the sandboxes' links, processes and namespaces are gone.
//!
//! The world: a network namespace of the test's own ("the internet"),
//! reached from the host over a veth pair, with web servers on two addresses
//! and a DNS server; a web server on the host's side of the veth and one on
//! the host's loopback (both must stay closed to sandboxes). Nothing leaves
//! the machine.

mod common;
use common::daemon::setup;
use common::sdk::{have_tool, run_unittest, SDK};
use common::*;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The world's public addresses (in 198.18.0.0/15, the benchmarking range
/// nothing on a test machine uses), and a private one (a LAN's).
const HOST_IP: &str = "198.18.77.1";
const ALLOWED_IP: &str = "198.18.77.2";
const OTHER_IP: &str = "198.18.77.3";
const HOST_PRIVATE_IP: &str = "10.199.77.1";
const PRIVATE_IP: &str = "10.199.77.5";
const PORT: u16 = 8080;
const HOST_PORT: u16 = 8099;
const PYTHON_LIMIT: Duration = Duration::from_secs(240);

/// The world, taken down (by the pids and names it made) when dropped.
struct World {
    netns: String,
    veth: String,
    servers: Vec<Child>,
    _dirs: Vec<tempfile::TempDir>,
    loopback_port: u16,
}

impl Drop for World {
    fn drop(&mut self) {
        for s in &mut self.servers {
            let _ = s.kill();
            let _ = s.wait();
        }
        let _ = Command::new("ip")
            .args(["link", "del", &self.veth])
            .status();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.netns])
            .status();
    }
}

fn run(args: &[&str]) {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A directory whose file `who` says `body`.
fn site(body: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("who"), format!("{body}\n")).unwrap();
    dir
}

/// `python3 -m http.server` on ADDR:PORT serving `dir`, in `netns` if given.
fn web_server(netns: Option<&str>, addr: &str, port: u16, dir: &Path) -> Child {
    let mut c = match netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns, PYTHON]);
            c
        }
        None => Command::new(PYTHON),
    };
    c.args([
        "-m",
        "http.server",
        &port.to_string(),
        "--bind",
        addr,
        "--directory",
    ])
    .arg(dir)
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .spawn()
    .expect("start a web server")
}

fn wait_until_up(addr: &str, port: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let target = format!("{addr}:{port}").parse().unwrap();
    while std::net::TcpStream::connect_timeout(&target, Duration::from_millis(200)).is_err() {
        assert!(Instant::now() < deadline, "{addr}:{port} did not come up");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn build_world() -> World {
    let tag = std::process::id() % 100_000;
    let (netns, veth, peer) = (
        format!("alcove-test-net-{tag}"),
        format!("altw{tag}"),
        format!("altp{tag}"),
    );
    let _ = Command::new("ip").args(["netns", "del", &netns]).status();
    run(&["ip", "netns", "add", &netns]);
    let mut world = World {
        netns: netns.clone(),
        veth: veth.clone(),
        servers: Vec::new(),
        _dirs: Vec::new(),
        loopback_port: 0,
    };
    run(&[
        "ip", "link", "add", &veth, "type", "veth", "peer", "name", &peer,
    ]);
    run(&["ip", "link", "set", &peer, "netns", &netns]);
    run(&["ip", "addr", "add", &format!("{HOST_IP}/24"), "dev", &veth]);
    run(&[
        "ip",
        "addr",
        "add",
        &format!("{HOST_PRIVATE_IP}/24"),
        "dev",
        &veth,
    ]);
    run(&["ip", "link", "set", &veth, "up"]);
    let inside = |args: &[&str]| {
        let mut all = vec!["ip", "-n", netns.as_str()];
        all.extend_from_slice(args);
        run(&all);
    };
    inside(&["link", "set", "lo", "up"]);
    inside(&["addr", "add", &format!("{ALLOWED_IP}/24"), "dev", &peer]);
    inside(&["addr", "add", &format!("{OTHER_IP}/24"), "dev", &peer]);
    inside(&["addr", "add", &format!("{PRIVATE_IP}/24"), "dev", &peer]);
    inside(&["link", "set", &peer, "up"]);

    let (allowed, other, host, loopback, private) = (
        site("allowed"),
        site("other"),
        site("host"),
        site("loopback"),
        site("private"),
    );
    world
        .servers
        .push(web_server(Some(&netns), ALLOWED_IP, PORT, allowed.path()));
    world
        .servers
        .push(web_server(Some(&netns), OTHER_IP, PORT, other.path()));
    world
        .servers
        .push(web_server(Some(&netns), PRIVATE_IP, PORT, private.path()));
    world
        .servers
        .push(web_server(None, HOST_IP, HOST_PORT, host.path()));
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    world.loopback_port = free.local_addr().unwrap().port();
    drop(free);
    world.servers.push(web_server(
        None,
        "127.0.0.1",
        world.loopback_port,
        loopback.path(),
    ));
    world._dirs = vec![allowed, other, host, loopback, private];
    let dns = Command::new("ip")
        .args(["netns", "exec", &netns, PYTHON])
        .arg(Path::new(SDK).join("tests/fake_dns.py"))
        .args([ALLOWED_IP, "53"])
        .args([
            format!("allowed.test={ALLOWED_IP}"),
            format!("blocked.test={OTHER_IP}"),
            format!("a.wild.test={ALLOWED_IP}"),
            format!("wild.test={ALLOWED_IP}"),
            format!("rebind.test={HOST_IP}"),
            format!("private.test={PRIVATE_IP}"),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the DNS server");
    world.servers.push(dns);
    for (addr, port) in [
        (ALLOWED_IP, PORT),
        (OTHER_IP, PORT),
        (PRIVATE_IP, PORT),
        (HOST_IP, HOST_PORT),
        ("127.0.0.1", world.loopback_port),
    ] {
        wait_until_up(addr, port);
    }
    world
}

/// The host-side links of outbound sandboxes (`alcN`).
fn sandbox_links() -> Vec<String> {
    let out = Command::new("ip").args(["-o", "link"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|name| name.split('@').next().unwrap_or(name).to_owned())
        .filter(|name| {
            name.strip_prefix("alc")
                .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        })
        .collect()
}

#[test]
fn outbound_network_and_allow_lists() {
    outbound("outbound_network_and_allow_lists", "");
}

/// The same cases with every sandbox in the gVisor tier: its sockets are
/// host sockets in its link's namespace, held by the same eBPF rules.
#[test]
fn outbound_network_and_allow_lists_in_gvisor() {
    let test = "outbound_network_and_allow_lists_in_gvisor";
    if common::gvisor::runsc_or_skip(test) {
        outbound(test, "gvisor");
    }
}

/// e2e_network's cases, their sandboxes in the tier `isolation` ("": the default).
fn outbound(test: &str, isolation: &str) {
    if !python_or_skip(test) {
        return;
    }
    for tool in ["ip", "iptables", "nsenter"] {
        if !have_tool(tool) {
            skip_unprovided(
                test,
                &format!("needs {tool} (scripts/packages.sh installs it)"),
            );
            return;
        }
    }
    let links_before = sandbox_links();
    let Some(s) = setup(test, &["--sandbox-dns", &format!("{ALLOWED_IP}:53")]) else {
        return;
    };
    let world = build_world();

    let mut saw_links = Vec::new();
    let env = [
        ("NET_ALLOWED_IP", ALLOWED_IP.to_owned()),
        ("NET_OTHER_IP", OTHER_IP.to_owned()),
        ("NET_PRIVATE_IP", PRIVATE_IP.to_owned()),
        ("NET_PORT", PORT.to_string()),
        ("NET_HOST_IP", HOST_IP.to_owned()),
        ("NET_HOST_PORT", HOST_PORT.to_string()),
        ("NET_LOOPBACK_PORT", world.loopback_port.to_string()),
        ("SANDBOX_ISOLATION", isolation.to_owned()),
    ];
    let runsc_before = common::gvisor::runsc_processes();
    let mut saw_runsc = false;
    let (passed, text) = run_unittest(&s.daemon, "e2e_network", &env, PYTHON_LIMIT, || {
        for link in sandbox_links() {
            if !links_before.contains(&link) && !saw_links.contains(&link) {
                saw_links.push(link);
            }
        }
        saw_runsc |= common::gvisor::runsc_processes()
            .iter()
            .any(|p| !runsc_before.contains(p));
    });
    assert_eq!(
        saw_runsc,
        isolation == "gvisor",
        "runsc processes seen while the {isolation:?} sandboxes ran: {saw_runsc}"
    );
    let log = || s.daemon.log.lock().unwrap().clone();
    eprintln!("--- e2e_network ---\n{text}");
    assert!(
        passed,
        "e2e_network failed:\n{text}\n--- daemon log ---\n{}",
        log()
    );
    assert!(
        text.lines().any(|l| l == "OK") && !text.contains("skipped"),
        "every case must run and pass, none skipped:\n{text}"
    );
    assert!(
        !log().contains("panicked"),
        "the daemon panicked:\n{}",
        log()
    );
    assert!(
        !saw_links.is_empty(),
        "no sandbox link (alcN) was seen while the sandboxes ran"
    );
    // The refusals were the kernel's and the resolver's, and the log says so.
    assert!(
        log().contains("names outside its allow-list refused"),
        "the daemon's log names no refused name:\n{}",
        log()
    );

    // Their links go with them.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let left: Vec<String> = sandbox_links()
            .into_iter()
            .filter(|l| saw_links.contains(l))
            .collect();
        if left.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the sandboxes' links are still there: {left:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(world);
}
