//! Agent sandboxes end to end, through the Python SDK: each test starts a
//! real `alcove serve`, runs one TestCase class of
//! clients/python/tests/e2e_sandboxes.py against it, and then checks from
//! the host that nothing of the sandboxes is left: no process, no pid
//! namespace in use, no cgroup of theirs (beyond the bounded pool's empty
//! slots), no mount. While the Python runs, a watcher thread records what
//! the sandboxes were (their processes, namespaces, cgroups, mounts), so
//! each after-check first asserts that there was something to find.

mod common;
use common::daemon::{setup, Daemon};
use common::sdk::SDK;
use common::*;
use std::collections::{BTreeSet, HashMap};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The user agent sandboxes run as.
const SANDBOX_UID: u32 = 65534;
/// The longest one class may take (it is meant to take seconds).
const PYTHON_LIMIT: Duration = Duration::from_secs(240);
/// How long teardown (a reclaimed sandbox is killed in the background) may take.
const TEARDOWN_LIMIT: Duration = Duration::from_secs(15);

#[test]
fn commands() {
    e2e("commands", "Commands");
}

#[test]
fn files() {
    e2e("files", "Files");
}

#[test]
fn code_interpreter() {
    e2e("code_interpreter", "Code");
}

#[test]
fn lifecycle() {
    e2e("lifecycle", "Lifecycle");
}

#[test]
fn paused_removal() {
    e2e("paused_removal", "PausedRemoval");
}

#[test]
fn limits_and_isolation() {
    e2e("limits_and_isolation", "Limits");
}

#[test]
fn bad_input() {
    e2e("bad_input", "BadInput");
}

#[test]
fn terminal() {
    e2e("terminal", "Terminal");
}

#[test]
fn port_previews() {
    e2e("port_previews", "e2e_preview.Preview");
}

#[test]
fn fork_and_snapshot() {
    e2e("fork_and_snapshot", "e2e_preview.ForkSnapshot");
}

#[test]
fn fork_with_memory() {
    e2e("fork_with_memory", "e2e_preview.ForkMemory");
}

#[test]
fn guard_budgets_and_rules() {
    e2e("guard_budgets_and_rules", "e2e_guard.Guard");
}

/// A host whose sandboxes could use up each other's file watches is told
/// so at start, with the fix; one with room is not.
#[test]
fn a_host_with_few_file_watches_is_warned_at_start() {
    let Some(s) = setup("a_host_with_few_file_watches_is_warned_at_start", &[]) else {
        return;
    };
    let instances: u64 = std::fs::read_to_string("/proc/sys/fs/inotify/max_user_instances")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let warned = s
        .daemon
        .log
        .lock()
        .unwrap()
        .contains("sandboxes share the host's file watches");
    eprintln!("max_user_instances is {instances} here: warned {warned}");
    assert_eq!(warned, instances < 1024, "{}", s.daemon.log.lock().unwrap());
}

/// `Class` of e2e_sandboxes.py, or `module.Class` as given.
fn module_class(class: &str) -> String {
    if class.contains('.') {
        class.to_owned()
    } else {
        format!("e2e_sandboxes.{class}")
    }
}

/// Runs `e2e_sandboxes.CLASS` against a fresh daemon, then checks the host.
fn e2e(test: &str, class: &str) {
    if !python_or_skip(test) {
        return;
    }
    let Some(s) = setup(test, &[]) else { return };
    let daemon = s.daemon.child.id() as i32;
    let mounts_before: BTreeSet<String> = host_mounts().into_iter().collect();
    let nobody_before = processes_of(SANDBOX_UID);
    let alcove_dirs = daemon_alcove_dirs(daemon);
    let cgroups_before = children(&alcove_dirs);

    let watcher = Watcher::start(daemon, mounts_before.clone());
    let started = Instant::now();
    let (ok, output) =
        common::sdk::run_unittest(&s.daemon, &module_class(class), &[], PYTHON_LIMIT, || {});
    let took = started.elapsed();
    let end = now_ticks();
    let seen = watcher.stop();
    let _thaw = Thaw {
        daemon,
        alcove_dirs: alcove_dirs.clone(),
        seen: seen.cgroups.clone(),
    };
    eprintln!(
        "--- e2e_sandboxes.{class} ({:.1} s) ---\n{output}",
        took.as_secs_f64()
    );
    let log = || s.daemon.log.lock().unwrap().clone();
    assert!(
        ok,
        "e2e_sandboxes.{class} failed:\n{output}\n--- daemon log ---\n{}",
        log()
    );
    let ran = ran_count(&output);
    assert!(
        ran > 0 && output.lines().any(|l| l == "OK") && !output.contains("skipped"),
        "e2e_sandboxes.{class}: every case must run and pass, none skipped (ran {ran}):\n{output}"
    );
    assert!(
        !log().contains("panicked"),
        "the daemon panicked:\n{}",
        log()
    );
    // A fork's interpreter is the parent's agent's child by the time the
    // daemon asks that agent to reap it (the session reaps the child that
    // made it before it answers).
    assert!(
        !log().contains("is not a child of the agent"),
        "a parent's agent was asked to reap a process that is not its child:\n{}",
        log()
    );

    // The situations the after-checks are about arose.
    assert!(
        !seen.processes.is_empty() && !seen.pid_namespaces.is_empty(),
        "no sandbox process (uid {SANDBOX_UID}, started by daemon {daemon}) was seen while {class} ran"
    );
    assert!(
        !seen.cgroups.is_empty(),
        "no sandbox cgroup was seen while {class} ran"
    );
    assert!(
        !seen.sandbox_mounts.is_empty(),
        "no mount of a sandbox's own (one the host does not have) was seen while {class} ran"
    );
    for dir in &seen.cgroups {
        assert!(
            alcove_dirs.iter().any(|a| dir.starts_with(a)),
            "sandbox cgroup {} is not under the daemon's cgroups' alcove/ ({alcove_dirs:?})",
            dir.display()
        );
    }
    eprintln!(
        "seen: {} sandbox processes in {} pid namespaces, cgroups {:?}, sandbox mounts {:?}",
        seen.processes.len(),
        seen.pid_namespaces.len(),
        seen.cgroups,
        seen.sandbox_mounts
    );

    // Nothing of them is left (a reclaimed sandbox is torn down in the background: wait a bit).
    let deadline = Instant::now() + TEARDOWN_LIMIT;
    loop {
        let left = leftovers(
            daemon,
            &seen,
            end,
            &nobody_before,
            &cgroups_before,
            &alcove_dirs,
        );
        if left.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "after e2e_sandboxes.{class}, {TEARDOWN_LIMIT:?} on, the sandboxes left:\n  {}\n--- daemon log ---\n{}",
            left.join("\n  "),
            log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let mounts_after: BTreeSet<String> = host_mounts().into_iter().collect();
    // Another daemon's sandbox homes (a test running beside this one) are
    // not this daemon's leaks; this daemon's are.
    let ours = s.daemon.data.to_string_lossy().into_owned();
    let new: Vec<&String> = mounts_after
        .difference(&mounts_before)
        .filter(|m| !is_pooled(m))
        .filter(|m| m.starts_with(&ours) || !m.contains("/sandboxes/sb-"))
        .collect();
    assert!(
        new.is_empty(),
        "mounts the host has now and had not: {new:?}"
    );
    let leaked: Vec<&String> = seen
        .sandbox_mounts
        .iter()
        .filter(|m| mounts_after.contains(*m))
        .collect();
    assert!(
        leaked.is_empty(),
        "a sandbox's own mounts are on the host: {leaked:?}"
    );
}

/// N from unittest's "Ran N tests in ...".
fn ran_count(output: &str) -> usize {
    output
        .lines()
        .find_map(|l| l.strip_prefix("Ran ")?.split(' ').next()?.parse().ok())
        .unwrap_or(0)
}

/// alcove's bounded, reusable pieces: pool slots and template namespaces.
fn is_pooled(mount_point: &str) -> bool {
    mount_point.starts_with("/run/alcove/pool/")
        || mount_point.starts_with("/run/alcove/templates/")
}

/// A process's parent and start time (clock ticks after boot), from /proc/PID/stat.
fn stat(pid: i32) -> Option<(i32, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after "(comm)": state, ppid, ..., starttime is the 20th.
    let fields: Vec<&str> = text[text.rfind(')')? + 2..].split(' ').collect();
    Some((fields.get(1)?.parse().ok()?, fields.get(19)?.parse().ok()?))
}

fn uid_of(pid: i32) -> Option<u32> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(format!("/proc/{pid}"))
        .ok()
        .map(|m| m.uid())
}

fn pids() -> Vec<i32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse().ok())
        .collect()
}

/// Now, in the clock ticks /proc/PID/stat counts start times in.
fn now_ticks() -> u64 {
    let uptime: f64 = std::fs::read_to_string("/proc/uptime")
        .unwrap()
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (uptime * hz) as u64 + 1
}

/// Every process of `uid` now: (pid, start time) — `ps -u UID`.
fn processes_of(uid: u32) -> BTreeSet<(i32, u64)> {
    pids()
        .into_iter()
        .filter(|p| uid_of(*p) == Some(uid))
        .filter_map(|p| Some((p, stat(p)?.1)))
        .collect()
}

/// The processes of the sandbox user whose ancestor is `root` (the daemon).
fn sandbox_processes(root: i32) -> Vec<(i32, u64)> {
    descendants(root)
        .into_iter()
        .filter(|(pid, _)| uid_of(*pid) == Some(SANDBOX_UID))
        .collect()
}

/// Every process whose ancestor is `root`: (pid, start time).
fn descendants(root: i32) -> Vec<(i32, u64)> {
    let table: HashMap<i32, (i32, u64)> = pids()
        .into_iter()
        .filter_map(|p| Some((p, stat(p)?)))
        .collect();
    let descends = |mut pid: i32| {
        for _ in 0..64 {
            match table.get(&pid) {
                Some((parent, _)) if *parent == root => return true,
                Some((parent, _)) if *parent > 1 => pid = *parent,
                _ => return false,
            }
        }
        false
    };
    table
        .iter()
        .filter(|(pid, _)| descends(**pid))
        .map(|(pid, (_, start))| (*pid, *start))
        .collect()
}

fn pid_namespace(pid: i32) -> Option<String> {
    std::fs::read_link(format!("/proc/{pid}/ns/pid"))
        .ok()
        .map(|l| l.to_string_lossy().into_owned())
}

/// Mount points as `pid` sees them.
fn mount_points(pid: i32) -> BTreeSet<String> {
    std::fs::read_to_string(format!("/proc/{pid}/mountinfo"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(str::to_owned))
        .collect()
}

/// Where the daemon's sandboxes get their cgroups: `alcove/` under each of
/// the daemon's own cgroups (the parent of a delegated `supervisor` leaf).
fn daemon_alcove_dirs(daemon: i32) -> Vec<PathBuf> {
    let leaf = format!("/{}", alcove_cgroup::LEAF);
    let dirs: Vec<PathBuf> = cgroups_of(daemon)
        .into_iter()
        .map(|d| {
            let text = d.to_string_lossy();
            PathBuf::from(text.strip_suffix(leaf.as_str()).unwrap_or(&text)).join("alcove")
        })
        .collect();
    assert!(!dirs.is_empty(), "daemon {daemon} is in no cgroup");
    dirs
}

/// The cgroup directories directly under `dirs`.
fn children(dirs: &[PathBuf]) -> BTreeSet<PathBuf> {
    dirs.iter()
        .flat_map(|d| std::fs::read_dir(d).into_iter().flatten().flatten())
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.path())
        .collect()
}

/// Whether the cgroup2 directory `dir` is set frozen.
fn frozen(dir: &Path) -> bool {
    std::fs::read_to_string(dir.join("cgroup.freeze")).is_ok_and(|f| f.trim() == "1")
}

/// Thaws, when dropped (after a failure too, before the daemon is killed),
/// the daemon's sandbox cgroups left frozen with nothing in them but the
/// daemon's own processes: a frozen pool slot would freeze whatever sandbox
/// of any alcove on this host is put there next.
struct Thaw {
    daemon: i32,
    alcove_dirs: Vec<PathBuf>,
    seen: BTreeSet<PathBuf>,
}

impl Drop for Thaw {
    fn drop(&mut self) {
        let ours: BTreeSet<i32> = descendants(self.daemon).iter().map(|(p, _)| *p).collect();
        for dir in children(&self.alcove_dirs).union(&self.seen) {
            if !frozen(dir) {
                continue;
            }
            let held: Vec<i32> = processes_in_cgroup(dir)
                .iter()
                .filter_map(|p| p.parse().ok())
                .collect();
            let mine = if held.is_empty() {
                self.seen.contains(dir)
            } else {
                held.iter().all(|p| ours.contains(p))
            };
            if mine {
                let _ = std::fs::write(dir.join("cgroup.freeze"), "0");
                eprintln!("thawed {} (left frozen, holding {held:?})", dir.display());
            }
        }
    }
}

/// What the watcher saw of the daemon's sandboxes.
#[derive(Default, Debug)]
struct Seen {
    processes: BTreeSet<(i32, u64)>,
    pid_namespaces: BTreeSet<String>,
    /// Their cgroups (the ones alcove made: under an `alcove/` directory).
    cgroups: BTreeSet<PathBuf>,
    /// Mount points in a sandbox that the host does not have.
    sandbox_mounts: BTreeSet<String>,
}

/// Samples the daemon's sandboxes every few milliseconds, on a thread.
struct Watcher {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Seen>,
}

impl Watcher {
    fn start(daemon: i32, host: BTreeSet<String>) -> Watcher {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let mut seen = Seen::default();
            // Pid namespaces whose mounts have been read once they were the
            // sandbox's own: a process caught while its sandbox is still
            // being set up sees the host's, so the others are read again.
            let mut mounts_read = BTreeSet::new();
            while !flag.load(Ordering::Relaxed) {
                for (pid, start) in sandbox_processes(daemon) {
                    if let Some(ns) = pid_namespace(pid) {
                        if !mounts_read.contains(&ns) {
                            let own: Vec<String> = mount_points(pid)
                                .into_iter()
                                .filter(|m| !host.contains(m))
                                .collect();
                            if !own.is_empty() {
                                seen.sandbox_mounts.extend(own);
                                mounts_read.insert(ns.clone());
                            }
                        }
                        seen.pid_namespaces.insert(ns);
                    }
                    if !seen.processes.insert((pid, start)) {
                        continue;
                    }
                    let made = cgroups_of(pid)
                        .into_iter()
                        .filter(|d| d.components().any(|c| c.as_os_str() == "alcove"));
                    seen.cgroups.extend(made);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            seen
        });
        Watcher { stop, thread }
    }

    fn stop(self) -> Seen {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("the watcher thread")
    }
}

/// What is left of the sandboxes the watcher saw, each said in a line; empty
/// when nothing is. `end`: when the Python finished (clock ticks): a process
/// in one of their pid namespaces that started later is another's (the
/// kernel reuses a freed namespace's number).
fn leftovers(
    daemon: i32,
    seen: &Seen,
    end: u64,
    nobody_before: &BTreeSet<(i32, u64)>,
    cgroups_before: &BTreeSet<PathBuf>,
    alcove_dirs: &[PathBuf],
) -> Vec<String> {
    let mut left = Vec::new();
    let ours = |pid: i32| -> bool {
        let Some((_, start)) = stat(pid) else {
            return false;
        };
        seen.processes.contains(&(pid, start))
            || (start <= end
                && pid_namespace(pid).is_some_and(|n| seen.pid_namespaces.contains(&n)))
    };
    let cmdline = |pid: i32| {
        std::fs::read(format!("/proc/{pid}/cmdline"))
            .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
            .unwrap_or_default()
    };
    // Processes: the ones seen, any in their pid namespaces, any of the sandbox user under the daemon.
    for (pid, start) in &seen.processes {
        if stat(*pid).is_some_and(|(_, s)| s == *start) {
            left.push(format!("process {pid} ({}) still runs", cmdline(*pid)));
        }
    }
    for pid in pids() {
        if !seen.processes.iter().any(|(p, _)| *p == pid) && ours(pid) {
            left.push(format!(
                "process {pid} ({}) is in a sandbox's pid namespace",
                cmdline(pid)
            ));
        }
    }
    for (pid, _) in descendants(daemon) {
        left.push(format!(
            "process {pid} ({}, uid {:?}) under the daemon",
            cmdline(pid),
            uid_of(pid)
        ));
    }
    // `ps -u 65534`, before and after: the new ones must be others'.
    for (pid, start) in processes_of(SANDBOX_UID).difference(nobody_before) {
        if ours(*pid) && !seen.processes.contains(&(*pid, *start)) {
            left.push(format!(
                "new uid-{SANDBOX_UID} process {pid} ({}) is ours",
                cmdline(*pid)
            ));
        }
    }
    // Cgroups: a pool slot may stay (empty of ours); anything else alcove made must go.
    for dir in &seen.cgroups {
        let slot = dir
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("slot-"));
        if !dir.exists() {
            continue;
        }
        if !slot && !cgroups_before.contains(dir) {
            left.push(format!("cgroup {} is still there", dir.display()));
        }
        let held = processes_in_cgroup(dir);
        for pid in &held {
            if pid.parse().is_ok_and(ours) {
                left.push(format!(
                    "cgroup {} still holds process {pid}",
                    dir.display()
                ));
            }
        }
        // A slot left frozen freezes the next sandbox put there at birth.
        if held.is_empty() && frozen(dir) {
            left.push(format!(
                "cgroup {} is empty but left frozen (cgroup.freeze 1)",
                dir.display()
            ));
        }
    }
    // Fresh (unpooled) cgroups are named sb-PID-...: the daemon's must be gone
    // (other alcoves on this host make and remove theirs meanwhile).
    let fresh = format!("sb-{daemon}-");
    for dir in children(alcove_dirs).difference(cgroups_before) {
        let name = dir.file_name().unwrap_or_default().to_string_lossy();
        if name.starts_with(&fresh) {
            left.push(format!(
                "the daemon's fresh cgroup {} is still there",
                dir.display()
            ));
        }
    }
    left
}

/// `alcove ARGS` against `d` (not `alcove fn`): its exit code and stdout.
fn alcove(d: &Daemon, args: &[&str]) -> (i32, String) {
    let out = Command::new(ALCOVE)
        .args(args)
        .env("ALCOVE_SERVER", d.url())
        .env("ALCOVE_TOKEN", d.token.as_deref().unwrap_or_default())
        .stdin(Stdio::null())
        .output()
        .expect("run alcove");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.code().is_some(),
        "alcove {args:?} was killed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

/// The CLI end to end, and the event stream: a sandbox's commands show as
/// exec and exit events tagged with its id, between its start and end.
#[test]
fn cli_and_events_name_the_sandbox() {
    let Some(s) = setup("cli_and_events_name_the_sandbox", &[]) else {
        return;
    };
    let d = &s.daemon;
    let mut events = Command::new(ALCOVE)
        .args(["events"])
        .env("ALCOVE_SERVER", d.url())
        .env("ALCOVE_TOKEN", d.token.as_deref().unwrap_or_default())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start alcove events");
    std::thread::sleep(Duration::from_millis(500)); // subscribed before the sandbox starts
    let (code, id) = alcove(d, &["sandbox", "create", "--meta", "who=cli"]);
    assert_eq!(code, 0, "create: {id}");
    let id = id.trim().to_owned();
    assert!(id.starts_with("sb-"), "{id}");
    let (code, out) = alcove(
        d,
        &["sandbox", "exec", &id, "--", "sh", "-c", "echo out; exit 7"],
    );
    assert_eq!((code, out.as_str()), (7, "out\n"));
    let (code, listed) = alcove(d, &["sandbox", "ls", "--meta", "who=cli"]);
    assert_eq!(code, 0);
    assert!(listed.contains(&id), "{listed}");
    // A forkable sandbox and a fork with its interpreter's memory, from the CLI.
    let (code, parent) = alcove(d, &["sandbox", "create", "--forkable", "--meta", "who=cli"]);
    assert_eq!(code, 0, "create --forkable: {parent}");
    let parent = parent.trim().to_owned();
    let (code, out) = alcove(d, &["sandbox", "code", &parent, "x = 41"]);
    assert_eq!(code, 0, "{out}");
    let (code, fork) = alcove(d, &["sandbox", "fork", "--memory", &parent]);
    assert_eq!(code, 0, "fork --memory: {fork}");
    let fork = fork.trim().to_owned();
    let (code, out) = alcove(d, &["sandbox", "code", &fork, "x + 1"]);
    assert_eq!(
        (code, out.trim()),
        (0, "42"),
        "the fork's interpreter has x"
    );
    let (code, out) = alcove(d, &["sandbox", "fork", "--memory", &id]);
    assert_ne!(
        code, 0,
        "a sandbox that is not forkable forks with memory: {out}"
    );
    for sb in [&fork, &parent] {
        assert_eq!(alcove(d, &["sandbox", "rm", sb]).0, 0);
    }
    let (code, _) = alcove(d, &["sandbox", "rm", &id]);
    assert_eq!(code, 0);
    let (code, _) = alcove(d, &["sandbox", "show", &id]);
    assert_ne!(code, 0, "a removed sandbox is gone");
    std::thread::sleep(Duration::from_millis(1500));
    let _ = events.kill();
    let mut text = String::new();
    events
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut text)
        .unwrap();
    let _ = events.wait();
    let mine: Vec<serde_json::Value> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| e["sandbox"] == id.as_str())
        .collect();
    let kinds: Vec<&str> = mine.iter().filter_map(|e| e["event"].as_str()).collect();
    assert!(kinds.first() == Some(&"sandbox_start"), "{kinds:?}\n{text}");
    assert!(kinds.last() == Some(&"sandbox_end"), "{kinds:?}\n{text}");
    if mine[0]["watched"] == false {
        println!("SKIPPED cli_and_events_name_the_sandbox (the exec events): the daemon's eBPF monitor did not load here");
        return;
    }
    assert!(
        mine.iter()
            .any(|e| e["event"] == "exec"
                && e["filename"].as_str().is_some_and(|f| f.ends_with("/sh"))),
        "no exec of sh tagged with the sandbox: {kinds:?}"
    );
    assert!(
        mine.iter().any(|e| e["event"] == "exit" && e["code"] == 7),
        "no exit 7 tagged with the sandbox: {kinds:?}"
    );
}

/// `alcove sandbox cp` both ways, and a refused upload larger than the
/// socket's buffers: the daemon's answer is what the CLI reports (it asks
/// with `Expect: 100-continue`), not the connection the daemon closed.
#[test]
fn cli_cp_round_trips_and_reports_a_refusal() {
    let Some(s) = setup("cli_cp_round_trips_and_reports_a_refusal", &[]) else {
        return;
    };
    let d = &s.daemon;
    let (code, id) = alcove(d, &["sandbox", "create"]);
    assert_eq!(code, 0, "create: {id}");
    let id = id.trim().to_owned();
    let dir = tempfile::tempdir().expect("a temp dir");
    let local = dir.path().join("big.bin");
    // 8 MiB that do not compress or repeat within a socket buffer.
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let bytes: Vec<u8> = (0..8 << 20)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect();
    std::fs::write(&local, &bytes).expect("write the local file");
    let local = local.to_str().expect("a UTF-8 temp path");
    let cp = |from: &str, to: &str| {
        let out = Command::new(ALCOVE)
            .args(["sandbox", "cp", from, to])
            .env("ALCOVE_SERVER", d.url())
            .env("ALCOVE_TOKEN", d.token.as_deref().unwrap_or_default())
            .stdin(Stdio::null())
            .output()
            .expect("run alcove sandbox cp");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, err) = cp(local, &format!("{id}:/tmp/big.bin"));
    assert_eq!(code, Some(0), "upload: {err}");
    let back = dir.path().join("back.bin");
    let (code, err) = cp(&format!("{id}:/tmp/big.bin"), back.to_str().unwrap());
    assert_eq!(code, Some(0), "download: {err}");
    assert!(
        std::fs::read(&back).expect("read the download") == bytes,
        "the file came back changed"
    );
    // /tmp is a directory: the daemon refuses before it reads the body.
    let (code, err) = cp(local, &format!("{id}:/tmp"));
    assert_ne!(code, Some(0), "an upload onto a directory was taken: {err}");
    assert!(
        err.contains("/tmp") && err.contains("directory"),
        "the CLI did not report the daemon's answer: {err}"
    );
    let lowered = err.to_lowercase();
    assert!(
        !lowered.contains("broken pipe") && !lowered.contains("connection"),
        "the CLI reported the connection, not the answer: {err}"
    );
    assert_eq!(alcove(d, &["sandbox", "rm", &id]).0, 0);
}

/// The Python halves' own unit tests, so that the suite runs them: the
/// SDK's (a fake daemon on loopback) and the code interpreter's.
#[test]
fn python_sdk_and_interpreter_unit_tests() {
    if !python_or_skip("python_sdk_and_interpreter_unit_tests") {
        return;
    }
    // Pure Python with timing checks (streaming within 0.2 s): nothing of the
    // kernel's, so an emulated guest (scripts/vm-test.sh) leaves them to the host.
    if std::env::var_os("ALCOVE_EMULATED").is_some() {
        println!("SKIPPED python_sdk_and_interpreter_unit_tests: pure Python with timing checks, run on the host, not under emulation (ALCOVE_EMULATED)");
        return;
    }
    let repo = Path::new(SDK).join("../..");
    for (dir, args) in [
        (
            Path::new(SDK).to_path_buf(),
            vec!["-m", "unittest", "discover", "-s", "tests"],
        ),
        (
            repo.clone(),
            vec!["-m", "unittest", "runtimes/python/test_alcove_repl.py"],
        ),
    ] {
        let out = Command::new(PYTHON)
            .args(&args)
            .current_dir(&dir)
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .env_remove("ALCOVE_SERVER")
            .env_remove("ALCOVE_TOKEN")
            .stdin(Stdio::null())
            .output()
            .expect("run python3");
        let text = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(
            out.status.success(),
            "python3 {args:?} in {dir:?} failed:\n{text}"
        );
        let ran = ran_count(&text);
        assert!(ran >= 20, "python3 {args:?} ran only {ran} tests:\n{text}");
    }
}
