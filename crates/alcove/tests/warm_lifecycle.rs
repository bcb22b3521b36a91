//! A warm function's template through its life: a deploy whose
//! initialisation fails, hangs or leaves threads is refused and leaves no
//! version; a template that dies is rebuilt while requests run cold; ready
//! copies go when idle and come back on demand; templates come back after
//! the daemon restarts or is killed; and a thousand warm invocations leave
//! nothing behind. End to end against a real `alcove serve`.

mod common;
use common::daemon::{setup, Daemon};
use common::warm::{invoke, py, template_pid, template_pid_running};
use common::{alcove_cgroups, host_mounts, wait_until};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// `alcove fn deploy NAME --code CODE --runtime python --entry main.py EXTRA`.
fn deploy_args<'a>(name: &'a str, code: &'a Path, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "deploy",
        name,
        "--code",
        code.to_str().unwrap(),
        "--runtime",
        "python",
        "--entry",
        "main.py",
    ];
    args.extend_from_slice(extra);
    args
}

/// Deploys `code` warm with the Python runtime; must succeed.
fn deploy_warm(d: &Daemon, name: &str, code: &Path, extra: &[&str]) {
    let mut flags = vec!["--warm"];
    flags.extend_from_slice(extra);
    let args = deploy_args(name, code, &flags);
    let (status, out, err) = d.cli(&args);
    assert_eq!(status, 0, "deploy {name}: {err}{out}");
}

/// `x-alcove-start` of a reply that must have succeeded.
fn served(d: &Daemon, name: &str) -> String {
    let reply = invoke(d, name, b"");
    assert_eq!(reply.status, 200, "{name}: {}", reply.text());
    assert_eq!(reply.text(), "served", "{name}");
    reply.header("x-alcove-start").unwrap_or("").to_owned()
}

/// A handler with nothing to initialise.
const SERVES: &str = "def handle(body):\n    return \"served\"\n";

/// Whether `pid` is `ancestor` or one of its descendants.
fn descends_from(mut pid: i32, ancestor: i32) -> bool {
    for _ in 0..64 {
        if pid == ancestor {
            return true;
        }
        if pid <= 1 {
            return false;
        }
        let Some(parent) = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("PPid:"))
            .and_then(|p| p.trim().parse::<i32>().ok())
        else {
            return false;
        };
        pid = parent;
    }
    false
}

/// How many pid namespaces deep `pid` is (the length of its NSpid line).
fn pid_depth(pid: i32) -> usize {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("NSpid:"))
        .map_or(0, |l| l.split_whitespace().count())
}

/// The processes of `function` that the daemon `daemon` started: those
/// beneath it whose environment says ALCOVE_FUNCTION=`function`.
fn function_processes(daemon: i32, function: &str) -> Vec<i32> {
    let wanted = format!("ALCOVE_FUNCTION={function}");
    let mut found: Vec<i32> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| {
            let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
            String::from_utf8_lossy(&environ)
                .split('\0')
                .any(|v| v == wanted)
                && descends_from(pid, daemon)
        })
        .collect();
    found.sort();
    found
}

/// `function`'s copies: its template's descendants. A ready copy is one
/// pid namespace deeper than the template (it unshared one and forked into
/// it); one still setting itself up may not be yet.
fn copies(daemon: i32, function: &str) -> Vec<i32> {
    let Some(template) = template_pid(daemon, function) else {
        return Vec::new();
    };
    function_processes(daemon, function)
        .into_iter()
        .filter(|&pid| pid != template && descends_from(pid, template))
        .collect()
}

/// Waits until `function` has a ready copy (one pid namespace deeper than
/// its template); returns its copies then.
fn ready_copies(daemon: i32, function: &str) -> Vec<i32> {
    let mut found = Vec::new();
    wait_until(
        &format!("{function} has a ready copy"),
        Duration::from_secs(5),
        || {
            let Some(template) = template_pid(daemon, function) else {
                return false;
            };
            found = copies(daemon, function);
            found
                .iter()
                .any(|&pid| pid_depth(pid) == pid_depth(template) + 1)
        },
    );
    found
}

fn daemon_pid(d: &Daemon) -> i32 {
    d.child.id() as i32
}

/// Stops the daemon as an operator would (SIGTERM), waits for it, and
/// checks that it took its templates' pieces with it: no copy cgroup
/// (sb-PID-*) and no socket directory (/run/alcove/warm/PID-*) of its own
/// remain.
fn stop(d: &mut Daemon) {
    let pid = daemon_pid(d);
    // SAFETY: kill on the pid of a child this test started and has not reaped.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let status = d.child.wait().unwrap();
    assert!(status.success(), "the daemon stopped with {status}");
    let sb = format!("sb-{pid}-");
    let cgroups: Vec<PathBuf> = alcove_cgroups()
        .into_iter()
        .filter(|c| c.file_name().unwrap().to_string_lossy().starts_with(&sb))
        .collect();
    assert!(cgroups.is_empty(), "left behind: {cgroups:?}");
    let own = format!("{pid}-");
    let sockets: Vec<String> = warm_sockets()
        .into_iter()
        .filter(|n| n.starts_with(&own))
        .collect();
    assert!(
        sockets.is_empty(),
        "left behind in /run/alcove/warm: {sockets:?}"
    );
}

/// Requests `function` until one is served warm (each must succeed);
/// returns how many were cold before it.
fn until_warm(d: &Daemon, function: &str, limit: Duration) -> usize {
    let started = Instant::now();
    let mut cold = 0;
    loop {
        match served(d, function).as_str() {
            "warm" => return cold,
            "cold" => cold += 1,
            other => panic!("{function}: x-alcove-start {other:?}"),
        }
        assert!(
            started.elapsed() < limit,
            "{function} was not warm again within {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The function's versions as `fn show --json` lists them, or None when
/// there is no such function (and `fn ls` does not list it either).
fn versions(d: &Daemon, function: &str) -> Option<Vec<u64>> {
    let listed = d.cli_json(&["ls"])["functions"]
        .as_array()
        .unwrap()
        .iter()
        .any(|f| f["name"] == function);
    let (code, out, err) = d.cli(&["show", function, "--json"]);
    if code != 0 {
        assert!(
            err.contains("no function named"),
            "fn show {function}: {err}"
        );
        assert!(!listed, "fn ls lists {function}, fn show does not know it");
        return None;
    }
    assert!(listed, "fn show knows {function}, fn ls does not list it");
    let shown: serde_json::Value = serde_json::from_str(&out).unwrap();
    Some(
        shown["versions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["version"].as_u64().unwrap())
            .collect(),
    )
}

#[test]
fn an_init_that_raises_or_hangs_fails_the_deploy_and_leaves_no_version() {
    let Some(mut t) = setup(
        "an_init_that_raises_or_hangs_fails_the_deploy_and_leaves_no_version",
        &[],
    ) else {
        return;
    };
    let d = &t.daemon;
    let raises = py(
        t.dir.path(),
        "raises",
        "raise RuntimeError(\"boom at init\")\ndef handle(body):\n    return body\n",
    );
    let hangs = py(
        t.dir.path(),
        "hangs",
        "import time\ntime.sleep(120)\ndef handle(body):\n    return body\n",
    );
    let good = py(t.dir.path(), "good", SERVES);

    // A first deploy that fails makes no function.
    let err = common::daemon::refused(d, &deploy_args("boom", &raises, &["--warm"]));
    assert!(err.contains("boom at init"), "the cause is named: {err}");
    assert_eq!(versions(d, "boom"), None);

    // A later one makes no version: the function stays as it was, warm.
    deploy_warm(d, "kept", &good, &[]);
    assert_eq!(served(d, "kept"), "warm");
    let err = common::daemon::refused(d, &deploy_args("kept", &raises, &["--warm"]));
    assert!(err.contains("boom at init"), "the cause is named: {err}");
    assert_eq!(versions(d, "kept"), Some(vec![1]));

    let started = Instant::now();
    let err = common::daemon::refused(
        d,
        &deploy_args("kept", &hangs, &["--warm", "--init-timeout", "2s"]),
    );
    let took = started.elapsed();
    assert!(
        err.contains("did not say ready within 2 s"),
        "the deploy says why: {err}"
    );
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(60),
        "the deploy waited the init timeout, not more: {took:?}"
    );
    assert_eq!(versions(d, "kept"), Some(vec![1]));
    let err = common::daemon::refused(
        d,
        &deploy_args("hangs", &hangs, &["--warm", "--init-timeout", "2s"]),
    );
    assert!(err.contains("did not say ready within 2 s"), "{err}");
    assert_eq!(versions(d, "hangs"), None);
    // The hung templates were killed; the function that was kept still serves warm.
    wait_until(
        "the hung templates are gone",
        Duration::from_secs(5),
        || function_processes(daemon_pid(d), "hangs").is_empty(),
    );
    assert_eq!(served(d, "kept"), "warm");
    assert_eq!(function_processes(daemon_pid(d), "boom"), Vec::<i32>::new());
    stop(&mut t.daemon);
}

#[test]
fn an_init_that_starts_a_thread_fails_the_deploy_naming_threads() {
    let Some(mut t) = setup(
        "an_init_that_starts_a_thread_fails_the_deploy_naming_threads",
        &[],
    ) else {
        return;
    };
    let d = &t.daemon;
    let source = "import threading, time\n\
                  threading.Thread(target=time.sleep, args=(60,), daemon=True).start()\n\
                  def handle(body):\n    return body\n";
    let code = py(t.dir.path(), "threads", source);
    let err = common::daemon::refused(d, &deploy_args("threads", &code, &["--warm"]));
    assert!(err.contains("2 threads"), "the deploy names threads: {err}");
    assert_eq!(versions(d, "threads"), None);
    // The same code deployed cold is fine: the thread was the only problem.
    let (status, _, err) = d.cli(&deploy_args("threads", &code, &[]));
    assert_eq!(status, 0, "{err}");
    wait_until(
        "the threaded template is gone",
        Duration::from_secs(5),
        || template_pid(daemon_pid(d), "threads").is_none(),
    );
    stop(&mut t.daemon);
}

#[test]
fn a_killed_template_is_rebuilt_while_requests_run_cold() {
    let Some(mut t) = setup("a_killed_template_is_rebuilt_while_requests_run_cold", &[]) else {
        return;
    };
    let d = &t.daemon;
    let daemon = daemon_pid(d);
    // A slow initialisation, so that the rebuild is seen to take a while.
    let source = format!("import time\ntime.sleep(1.5)\n{SERVES}");
    let code = py(t.dir.path(), "rebuilt", &source);
    deploy_warm(d, "rebuilt", &code, &[]);
    assert_eq!(served(d, "rebuilt"), "warm");
    let old = template_pid(daemon, "rebuilt").expect("a running template");
    let old_copies = ready_copies(daemon, "rebuilt");
    // SAFETY: kill on the template's pid, found beneath this test's own daemon.
    assert_eq!(unsafe { libc::kill(old, libc::SIGKILL) }, 0);
    wait_until(
        "the template and its copies are gone",
        Duration::from_secs(5),
        || {
            !Path::new(&format!("/proc/{old}")).exists()
                && old_copies
                    .iter()
                    .all(|p| !Path::new(&format!("/proc/{p}")).exists())
        },
    );
    let cold = until_warm(d, "rebuilt", Duration::from_secs(15));
    assert!(
        cold >= 1,
        "the first requests after the kill ran cold while the template was rebuilt"
    );
    let new = template_pid(daemon, "rebuilt").expect("a rebuilt template");
    assert_ne!(new, old);
    for _ in 0..5 {
        assert_eq!(served(d, "rebuilt"), "warm");
    }
    assert_eq!(
        versions(d, "rebuilt"),
        Some(vec![1]),
        "no redeploy happened"
    );
    stop(&mut t.daemon);
}

/// Why a collapse into huge pages cannot be checked here, if it cannot:
/// MADV_COLLAPSE needs Linux 6.1, and with huge pages not by `madvise`
/// alone, what is huge before it is not known.
fn no_collapse_here() -> Option<String> {
    let thp = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled")
        .unwrap_or_else(|e| e.to_string());
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let version: Vec<u32> = release
        .split(|c: char| !c.is_ascii_digit())
        .take(2)
        .filter_map(|n| n.parse().ok())
        .collect();
    let too_old = version.len() < 2 || (version[0], version[1]) < (6, 1);
    (too_old || !thp.contains("[madvise]")).then(|| {
        format!(
            "needs MADV_COLLAPSE (Linux 6.1+, here {}) and transparent huge pages by \
             'madvise' alone (here: {})",
            release.trim(),
            thp.trim()
        )
    })
}

/// `name: N kB` fields of a process's /proc/PID/smaps_rollup, in KiB.
fn rollup_kib(pid: i32, name: &str) -> u64 {
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap();
    rollup
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in smaps_rollup of {pid}:\n{rollup}"))
}

#[test]
fn a_templates_state_is_backed_by_huge_pages_and_a_sparse_buffer_stays_sparse() {
    let test = "a_templates_state_is_backed_by_huge_pages_and_a_sparse_buffer_stays_sparse";
    if let Some(why) = no_collapse_here() {
        eprintln!("SKIPPED {test}: {why}");
        return;
    }
    let Some(mut t) = setup(test, &[]) else {
        return;
    };
    let d = &t.daemon;
    let source = format!(
        "import mmap, os\nblob = bytearray(os.urandom(32 << 20))\n\
         sparse = mmap.mmap(-1, 64 << 20, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)\n\
         for at in range(0, len(sparse), 1 << 20):\n    sparse[at] = 1\n{SERVES}"
    );
    let code = py(t.dir.path(), "big", &source);
    deploy_warm(d, "big", &code, &[]);
    assert_eq!(served(d, "big"), "warm");
    let template = template_pid(daemon_pid(d), "big").expect("a running template");
    check_collapsed_state(template, "python");

    // The C runtime's header does the same.
    let c_code = t.dir.path().join("big-c");
    std::fs::create_dir_all(&c_code).unwrap();
    std::fs::write(c_code.join("main.c"), BIG_STATE_C).unwrap();
    let runtime_c = concat!(env!("CARGO_MANIFEST_DIR"), "/../../runtimes/c");
    let built = std::process::Command::new("cc")
        .args(["-std=c11", "-O2", "-Wall", "-Werror", "-I", runtime_c, "-o"])
        .arg(c_code.join("big"))
        .arg(c_code.join("main.c"))
        .output()
        .expect("cc (the C compiler the Rust build links with)");
    assert!(
        built.status.success(),
        "cc: {}",
        String::from_utf8_lossy(&built.stderr)
    );
    let c_dir = c_code.to_str().unwrap();
    let args = [
        "deploy",
        "big-c",
        "--warm",
        "--handler",
        "/fn/big",
        "--code",
        c_dir,
    ];
    let (status, out, err) = d.cli(&args);
    assert_eq!(status, 0, "deploy big-c: {err}{out}");
    assert_eq!(served(d, "big-c"), "warm");
    let template = template_pid_running(daemon_pid(d), "big-c", "/fn/big").expect("a C template");
    check_collapsed_state(template, "C");
    stop(&mut t.daemon);
}

/// A warm template in C holding what the Python one above holds.
const BIG_STATE_C: &str = r#"#include "alcove_warm.h"
#include <string.h>
unsigned char *dense, *sparse; /* the handler reads them: kept by the compiler */
static int handle(void) { return dense[0] != 1 || sparse[0] != 1 || fputs("served", stdout) < 0; }
int main(void)
{
    dense = malloc(32u << 20);
    sparse = mmap(NULL, 64u << 20, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (!dense || sparse == MAP_FAILED)
        return 1;
    memset(dense, 1, 32u << 20);
    for (size_t at = 0; at < (64u << 20); at += 1u << 20)
        sparse[at] = 1;
    return alcove_serve(handle);
}
"#;

/// Backed before it said ready (its copies fork one entry per 2 MiB): the
/// 32 MiB state, and not the sparse buffer, whose collapse would fill its
/// 64 MiB (the runtime itself is ~10-20 MiB).
fn check_collapsed_state(template: i32, what: &str) {
    let (huge, rss) = (
        rollup_kib(template, "AnonHugePages"),
        rollup_kib(template, "Rss"),
    );
    assert!(
        (28 << 10..48 << 10).contains(&huge),
        "{what}: the template's 32 MiB state: {huge} KiB in huge pages"
    );
    assert!(
        rss < 80 << 10,
        "{what}: the template's RSS {rss} KiB, {huge} KiB huge"
    );
}

#[test]
fn idle_copies_go_and_requests_bring_them_back() {
    let Some(mut t) = setup(
        "idle_copies_go_and_requests_bring_them_back",
        &["--warm-idle", "1s", "--warm-ready", "4"],
    ) else {
        return;
    };
    let d = &t.daemon;
    let daemon = daemon_pid(d);
    let code = py(t.dir.path(), "idle", SERVES);
    deploy_warm(d, "idle", &code, &[]);
    for _ in 0..5 {
        assert_eq!(served(d, "idle"), "warm");
    }
    let template = template_pid(daemon, "idle").expect("a running template");
    ready_copies(daemon, "idle");
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        copies(daemon, "idle"),
        Vec::<i32>::new(),
        "copies remain after 3 s idle"
    );
    assert_eq!(
        function_processes(daemon, "idle"),
        vec![template],
        "only the template remains"
    );
    let sb = format!("sb-{daemon}-");
    assert!(
        !alcove_cgroups()
            .iter()
            .any(|c| c.file_name().unwrap().to_string_lossy().starts_with(&sb)),
        "the idle copies' cgroups remain"
    );
    // Scaled to zero copies, not to zero templates: the next request is warm.
    assert_eq!(served(d, "idle"), "warm");
    assert_eq!(template_pid(daemon, "idle"), Some(template));
    ready_copies(daemon, "idle");
    // The API (and the console) show the template's state.
    let shown = d.http("GET", "/v1/functions/idle", b"").json();
    let made = shown["template"]["copies_made"]
        .as_u64()
        .expect("a template's counts");
    assert!(made >= 6, "six requests were served warm: {shown}");
    assert!(
        shown["template"]["ready_copies"].as_u64().is_some(),
        "{shown}"
    );
    stop(&mut t.daemon);
}

#[test]
fn warm_functions_come_back_after_a_restart_and_a_kill() {
    let Some(mut t) = setup("warm_functions_come_back_after_a_restart_and_a_kill", &[]) else {
        return;
    };
    let code = py(t.dir.path(), "back", SERVES);
    deploy_warm(&t.daemon, "back", &code, &[]);
    assert_eq!(served(&t.daemon, "back"), "warm");
    let data = t.daemon.data.clone();
    for how in ["SIGTERM", "SIGKILL"] {
        let old_daemon = daemon_pid(&t.daemon);
        let old = template_pid(old_daemon, "back").expect("a running template");
        let old_copies = ready_copies(old_daemon, "back");
        if how == "SIGTERM" {
            stop(&mut t.daemon);
        } else {
            t.daemon.kill9();
        }
        // Whichever way the daemon ended, its template and copies ended too.
        wait_until(
            &format!("the template and copies are gone after {how}"),
            Duration::from_secs(5),
            || {
                std::iter::once(&old)
                    .chain(&old_copies)
                    .all(|p| !Path::new(&format!("/proc/{p}")).exists())
            },
        );
        t.daemon = Daemon::start(&data, &[]);
        let d = &t.daemon;
        until_warm(d, "back", Duration::from_secs(10));
        for _ in 0..3 {
            assert_eq!(served(d, "back"), "warm", "after {how}");
        }
        assert_eq!(
            versions(d, "back"),
            Some(vec![1]),
            "no redeploy after {how}"
        );
        let new = template_pid(daemon_pid(d), "back")
            .unwrap_or_else(|| panic!("no template after {how}"));
        assert_ne!(new, old);
        // What the old daemon's copies held is cleaned up.
        let sb = format!("sb-{old_daemon}-");
        let left: Vec<PathBuf> = alcove_cgroups()
            .into_iter()
            .filter(|c| c.file_name().unwrap().to_string_lossy().starts_with(&sb))
            .collect();
        assert!(left.is_empty(), "after {how}: {left:?}");
        let sockets = format!("{old_daemon}-");
        let left: Vec<String> = warm_sockets()
            .into_iter()
            .filter(|s| s.starts_with(&sockets))
            .collect();
        assert!(left.is_empty(), "after {how}: {left:?}");
    }
    stop(&mut t.daemon);
}

/// The entries of /run/alcove/warm (one socket directory per template).
fn warm_sockets() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir("/run/alcove/warm")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// What a daemon leaves on the host, counted.
#[derive(Debug, PartialEq)]
struct Held {
    /// Its copies' cgroups (sb-PID-*), each name once across the hierarchies.
    cgroups: usize,
    /// The function's processes: its template and copies.
    processes: usize,
    /// Its socket directories in /run/alcove/warm.
    sockets: usize,
    /// Mounts on the host outside alcove's bounded pools.
    mounts: Vec<String>,
}

fn held(daemon: i32, function: &str) -> Held {
    let sb = format!("sb-{daemon}-");
    let mut cgroups: Vec<String> = alcove_cgroups()
        .iter()
        .map(|c| c.file_name().unwrap().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(&sb))
        .collect();
    cgroups.sort();
    cgroups.dedup();
    let own = format!("{daemon}-");
    Held {
        cgroups: cgroups.len(),
        processes: function_processes(daemon, function).len(),
        sockets: warm_sockets()
            .iter()
            .filter(|s| s.starts_with(&own))
            .count(),
        mounts: host_mounts()
            .into_iter()
            .filter(|m| {
                !m.starts_with("/run/alcove/pool/") && !m.starts_with("/run/alcove/templates/")
            })
            .collect(),
    }
}

#[test]
fn a_thousand_warm_invocations_leave_nothing_behind() {
    let Some(mut t) = setup(
        "a_thousand_warm_invocations_leave_nothing_behind",
        &["--warm-ready", "4"],
    ) else {
        return;
    };
    let d = &t.daemon;
    let daemon = daemon_pid(d);
    // Each invocation leaves what it can: a file, a child, a socket.
    let source = r#"
import os, socket, subprocess
def handle(body):
    open("/tmp/x", "w").write("x" * 4096)
    subprocess.Popen(["sleep", "30"])
    s = socket.socket()
    s.bind(("127.0.0.1", 8080))
    s.listen()
    return "served"
"#;
    let code = py(t.dir.path(), "many", source);
    deploy_warm(d, "many", &code, &[]);
    for _ in 0..20 {
        assert_eq!(served(d, "many"), "warm");
    }
    std::thread::sleep(Duration::from_secs(2));
    let before = held(daemon, "many");
    assert!(
        before.processes >= 2 && before.cgroups >= 1 && before.sockets == 1,
        "the template and ready copies are there to count: {before:?}"
    );

    let started = Instant::now();
    for i in 0..1000 {
        let reply = invoke(d, "many", b"");
        assert_eq!(reply.status, 200, "invocation {i}: {}", reply.text());
        assert_eq!(
            reply.header("x-alcove-start"),
            Some("warm"),
            "invocation {i}: {:?}",
            reply.headers
        );
    }
    // Reported, not asserted: tests never judge speed (under TCG this takes minutes).
    let took = started.elapsed();

    std::thread::sleep(Duration::from_secs(3));
    let after = held(daemon, "many");
    assert!(
        after.processes <= 1 + 4,
        "more than the template and --warm-ready copies: {after:?}"
    );
    assert!(
        after.cgroups <= 4,
        "more copy cgroups than --warm-ready: {after:?}"
    );
    assert_eq!(after.sockets, 1, "one socket directory per template");
    assert_eq!(before.mounts, after.mounts, "the host's mounts changed");
    assert_eq!(
        common::processes_with("sleep 30")
            .into_iter()
            .filter(|&p| descends_from(p, daemon))
            .count(),
        0,
        "the invocations' children remain"
    );
    eprintln!("1000 warm invocations: {took:?}; before {before:?}; after {after:?}");
    stop(&mut t.daemon);
}
