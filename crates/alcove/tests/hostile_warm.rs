//! Warm starts attacked: a malicious initialisation that patches the Python
//! runtime so its copies skip or fake isolation steps, helpers left in the
//! template, hostile requests in a copy (escapes, leftovers, abuse of the
//! copy's connection to alcove and of alcove's copy socket), hostile deploy
//! settings and archives, budget and resource exhaustion at init, and the
//! API's changes of a warm function (PATCH, rollback, rm --force).
//!
//! Every attack that alcove withstands is asserted here: the refusal and the
//! words it names the problem with, or that the attack stayed confined. Four
//! known limitations the README lists are kept as `#[ignore]`d tests that
//! assert the behaviour wanted, each failing today (`cargo test -p alcove
//! --test hostile_warm -- --ignored --test-threads=1`).

mod common;
use base64::Engine as _;
use common::daemon::{setup, Daemon, Reply};
use common::warm::{invoke, py, start, template_pid};
use common::{processes_with, wait_until};
use serde_json::{json, Value};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::{Duration, Instant};

/// `alcove fn deploy NAME --code CODE --runtime python --entry main.py EXTRA`:
/// (exit status, stdout and stderr together).
fn deploy_py(d: &Daemon, name: &str, code: &Path, extra: &[&str]) -> (i32, String) {
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
    let (status, out, err) = d.cli(&args);
    (status, format!("{err}{out}"))
}

/// A warm deploy that must succeed.
fn deploy_warm(d: &Daemon, name: &str, code: &Path, extra: &[&str]) {
    let mut flags = vec!["--warm"];
    flags.extend_from_slice(extra);
    let (status, text) = deploy_py(d, name, code, &flags);
    assert_eq!(status, 0, "deploy {name}: {text}");
}

/// A warm deploy that must fail; what it said.
fn refused_warm(d: &Daemon, name: &str, code: &Path, extra: &[&str]) -> String {
    let mut flags = vec!["--warm"];
    flags.extend_from_slice(extra);
    let (status, text) = deploy_py(d, name, code, &flags);
    assert_ne!(status, 0, "deploy {name} should have been refused: {text}");
    text
}

/// Whether the daemon knows a function called `name`.
fn exists(d: &Daemon, name: &str) -> bool {
    let reply = d.http("GET", &format!("/v1/functions/{name}"), b"");
    match reply.status {
        200 => true,
        404 => false,
        other => panic!("GET /v1/functions/{name}: {other} {}", reply.text()),
    }
}

/// `x-alcove-status` of a reply: "exited", "signaled", ...
fn status(reply: &Reply) -> &str {
    reply.header("x-alcove-status").unwrap_or("")
}

/// An invocation that must succeed from a warm copy; its body as JSON.
fn warm_json(d: &Daemon, name: &str, body: &[u8]) -> Value {
    let reply = invoke(d, name, body);
    assert_eq!(reply.status, 200, "{name}: {}", reply.text());
    assert_eq!(start(&reply), "warm", "{name}: {:?}", reply.headers);
    serde_json::from_slice(&reply.body)
        .unwrap_or_else(|e| panic!("{name}: not JSON ({e}): {}", reply.text()))
}

/// The pids on the host whose environment says ALCOVE_FUNCTION=`function`.
fn function_processes(function: &str) -> Vec<i32> {
    let wanted = format!("ALCOVE_FUNCTION={function}");
    let mut found: Vec<i32> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
            String::from_utf8_lossy(&environ)
                .split('\0')
                .any(|v| v == wanted)
        })
        .collect();
    found.sort();
    found
}

fn daemon_log(d: &Daemon) -> String {
    d.log.lock().unwrap().clone()
}

/// Resident memory of `pid` in KiB (VmRSS).
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

fn open_descriptors(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

// ---- a malicious initialisation ---------------------------------------------

/// The copy side of the runtime, rewritten by a malicious initialisation:
/// the steps of docs/warm-protocol.md, each of which `OPTS` may skip or
/// change (`unshare`: the flags, 0 for none; `ro`, `fresh`, `fork2`,
/// `close_control`, `close_err`, `capbset`, `capset`: do that step;
/// `seccomp`: "copy", "allow" (a filter that allows everything) or None;
/// `before_fresh`, `before_fork2`, `before_connect`: code run at that point).
/// It is module-level code of the handler's file, so it runs in the template
/// before `ready`, as an author's would.
const EVIL: &str = r##"
import alcove_runtime as rt
import ctypes, os, socket, signal, fcntl, struct, sys, time

def _evil_copy(self, handle):
    o = OPTS
    err = 2
    step = 0
    def check(rc, what):
        if rc != 0:
            e = ctypes.get_errno()
            raise OSError(e, f"{what}: {os.strerror(e)}")
    try:
        flags = o.get("unshare", self.flags)
        if flags:
            step = 1
            check(self.libc.unshare(flags), f"unshare({flags:#x})")
            step = 2
            for path, text in (("setgroups", "deny"), ("uid_map", f"{self.uid} {self.uid} 1"),
                               ("gid_map", f"{self.gid} {self.gid} 1")):
                fd = os.open(f"/proc/self/{path}", os.O_WRONLY)
                try:
                    os.write(fd, text.encode())
                finally:
                    os.close(fd)
            step = 3
            self.mount(None, "/", None, rt.MS_REC | rt.MS_PRIVATE, None)
            step = 4
            if o.get("ro", True):
                self.mount_setattr("/", True, rt.MOUNT_ATTR_RDONLY, 0)
                for point in self.shared_rw:
                    self.mount_setattr(point, True, 0, rt.MOUNT_ATTR_RDONLY)
            if o.get("before_fresh"):
                exec(o["before_fresh"], globals(), {"self": self})
            if o.get("fresh", True):
                self.mount_fresh_places()
            step = 5
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                ifr = fcntl.ioctl(s.fileno(), rt.SIOCGIFFLAGS, struct.pack("16sh22x", b"lo", 0))
                fl = struct.unpack("16sh22x", ifr)[1] | rt.IFF_UP
                fcntl.ioctl(s.fileno(), rt.SIOCSIFFLAGS, struct.pack("16sh22x", b"lo", fl))
            if o.get("before_fork2"):
                exec(o["before_fork2"], globals(), {"self": self})
            if o.get("fork2", True):
                step = 6
                if os.fork() != 0:
                    os._exit(0)
                step = 7
                self.mount("proc", "/proc", "proc", rt.MS_NOSUID | rt.MS_NODEV | rt.MS_NOEXEC, None)
        step = 8
        err = os.dup(2)
        null = os.open("/dev/null", os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        os.close(null)
        if o.get("close_control", True):
            self.control.close()
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        step = 9
        if o.get("capbset", True):
            for cap in range(self.cap_last + 1):
                check(self.libc.prctl(rt.PR_CAPBSET_DROP, cap, 0, 0, 0), f"PR_CAPBSET_DROP {cap}")
        if o.get("capset", True):
            self.capset_empty()
        step = 10
        sec = o.get("seccomp", "copy")
        if sec == "copy":
            check(self.libc.prctl(rt.PR_SET_SECCOMP, rt.SECCOMP_MODE_FILTER,
                                  ctypes.addressof(self.fprog), 0, 0), "PR_SET_SECCOMP")
        elif sec == "allow":
            prog = ctypes.create_string_buffer(struct.pack("HBBI", 0x06, 0, 0, 0x7fff0000), 8)
            fp = rt.SockFprog(1, ctypes.addressof(prog))
            check(self.libc.prctl(rt.PR_SET_SECCOMP, rt.SECCOMP_MODE_FILTER,
                                  ctypes.addressof(fp), 0, 0), "PR_SET_SECCOMP")
        step = 11
        if o.get("before_connect"):
            exec(o["before_connect"], globals(), {"self": self})
        if o.get("close_err", True):
            os.close(err)
            err = -1
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        conn.connect(self.copy_socket)
        conn.send(b"copy")
    except BaseException as e:
        if err >= 0:
            try:
                os.write(err, f"evil: a copy failed at step {step}: {e}\n".encode())
            except OSError:
                pass
        return 70 + step
    payload, fds, msg_flags, _ = socket.recv_fds(conn, rt.MAX_REQUEST, 3)
    if not payload and not fds:
        return 0
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
    env = os.environb
    env.clear()
    for entry in payload.split(b"\0"):
        k, eq, v = entry.partition(b"=")
        if k and eq:
            env[k] = v
    code, start, end = rt.serve(handle, rt.read_all(0), False)
    rt.release_output()
    try:
        conn.send(f"exit {code} {start} {end}".encode())
    except OSError:
        pass
    return code

rt.Template.copy = _evil_copy
"##;

/// A handler that says its pid.
const PID_HANDLER: &str =
    "import json, os\ndef handle(body):\n    return json.dumps({\"pid\": os.getpid()})\n";

/// The handler file of a malicious initialisation: `init` (module-level code
/// run in the template), the patched runtime with `opts`, then `handler`.
fn evil(opts: &str, init: &str, handler: &str) -> String {
    format!("OPTS = {opts}\n{init}\n{EVIL}\n{handler}")
}

#[test]
fn copies_that_skip_an_isolation_step_are_refused_naming_it() {
    let Some(t) = setup(
        "copies_that_skip_an_isolation_step_are_refused_naming_it",
        &[],
    ) else {
        return;
    };
    let d = &t.daemon;
    // The patched runtime itself is fine: with nothing skipped it serves.
    let code = py(t.dir.path(), "faithful", &evil("{}", "", PID_HANDLER));
    deploy_warm(d, "faithful", &code, &[]);
    assert_eq!(warm_json(d, "faithful", b"")["pid"], 1);

    // (name, OPTS, initialisation, words the refusal must hold)
    let cases: &[(&str, &str, &str, &[&str])] = &[
        (
            "no-unshare",
            r#"{"unshare": 0, "capbset": False}"#,
            "",
            &["still in the template's user namespace"],
        ),
        (
            "no-pid-namespace",
            r#"{"fork2": False}"#,
            "",
            &["still in the template's pid namespace", "fork once more"],
        ),
        (
            "keeps-capabilities",
            r#"{"capbset": False, "capset": False}"#,
            "",
            &["still holds capabilities (CapPrm is 0x"],
        ),
        (
            "keeps-bounding-set",
            r#"{"capbset": False}"#,
            "",
            &["still holds capabilities (CapBnd is 0x", "PR_CAPBSET_DROP"],
        ),
        (
            "keeps-permitted",
            r#"{"capset": False}"#,
            "",
            &["still holds capabilities (CapPrm"],
        ),
        (
            "no-seccomp",
            r#"{"seccomp": None}"#,
            "",
            &[
                "seccomp filters, no more than the template's",
                "ALCOVE_COPY_FILTER",
            ],
        ),
        (
            "no-fresh-tmp",
            r#"{"ro": False, "fresh": False}"#,
            "",
            &["/tmp is writable in the copy", "the template can write to"],
        ),
        (
            "covered-tmp-left-writable",
            r#"{"ro": False}"#,
            "",
            &[
                "/tmp is writable in the copy",
                "before anything is mounted over it",
            ],
        ),
        (
            "keeps-control-socket",
            r#"{"close_control": False}"#,
            "",
            &["is a second socket in the copy"],
        ),
        (
            "keeps-stderr-pipe",
            r#"{"close_err": False}"#,
            "",
            &["(pipe:[", "close it before the runtime says ready"],
        ),
        (
            "pipe-from-init",
            "{}",
            "R, W = __import__('os').pipe()",
            &["(pipe:[", "made during initialisation"],
        ),
        (
            "socketpair-from-init",
            "{}",
            "SP = __import__('socket').socketpair()",
            &["(socket:[", "is a second socket in the copy"],
        ),
        (
            "epoll-from-init",
            "{}",
            "EP = __import__('select').epoll()",
            &["anon_inode:[eventpoll]", "epoll"],
        ),
        (
            "memfd-from-init",
            "{}",
            "MFD = __import__('os').memfd_create('evil')",
            &["/memfd:evil", "is a memfd in the copy"],
        ),
        (
            "shared-mmap",
            "{}",
            "import mmap\nM = mmap.mmap(-1, 4096)\nM[0] = 1",
            &["shared mapping", "MAP_PRIVATE"],
        ),
        (
            "writable-file-from-init",
            "{}",
            "F = open('/tmp/shared-by-every-copy', 'w')",
            &["/tmp/shared-by-every-copy", "open for writing in the copy"],
        ),
        (
            "directory-from-init",
            "{}",
            "import os\nD = os.open('/tmp', os.O_RDONLY | os.O_DIRECTORY)",
            &[
                "through a writable mount of the template",
                "openat in a directory",
            ],
        ),
        (
            "cwd-in-templates-tmp",
            r#"{"before_connect": "os.fchdir(D)\nos.close(D)"}"#,
            "import os\nos.makedirs('/tmp/evil', exist_ok=True)\nos.chmod('/tmp/evil', 0o777)\n\
             D = os.open('/tmp/evil', os.O_RDONLY | os.O_DIRECTORY)",
            &[
                "working directory (/tmp/evil)",
                "writable mount of the template",
            ],
        ),
        (
            "helper-child",
            r#"{"before_connect": "if os.fork() == 0:\n    time.sleep(300)\n    os._exit(0)"}"#,
            "",
            &["the copy has child processes ("],
        ),
        (
            "thread-before-connecting",
            r#"{"before_connect": "import threading\nthreading.Thread(target=time.sleep, args=(300,), daemon=True).start()"}"#,
            "",
            &["the copy has 2 threads"],
        ),
    ];
    for (name, opts, init, words) in cases {
        let code = py(t.dir.path(), name, &evil(opts, init, PID_HANDLER));
        let said = refused_warm(d, name, &code, &[]);
        assert!(
            said.contains("alcove refused the template's copies"),
            "{name}: {said}"
        );
        for word in *words {
            assert!(said.contains(word), "{name}: {word:?} not in: {said}");
        }
        assert!(!exists(d, name), "{name}: a refused deploy left a version");
    }

    // Only some namespaces: the template's filter lets exactly the copies'
    // flag set through, so the copy fails at once and says so on stderr.
    let code = py(
        t.dir.path(),
        "some-namespaces",
        &evil(r#"{"unshare": 0x10000000 | 0x20000}"#, "", PID_HANDLER),
    );
    let said = refused_warm(d, "some-namespaces", &code, &[]);
    assert!(
        said.contains("the template made no copy") && said.contains("unshare(0x10020000)"),
        "{said}"
    );
    assert!(said.contains("Operation not permitted"), "{said}");
    assert!(!exists(d, "some-namespaces"));

    // Nothing of the refused templates is left running.
    for (name, ..) in cases {
        wait_until(
            &format!("{name}'s processes are gone"),
            Duration::from_secs(5),
            || function_processes(name).is_empty(),
        );
    }
    // And the daemon still serves warm.
    assert_eq!(warm_json(d, "faithful", b"")["pid"], 1);
}

/// What a copy with read access to the template's /tmp can do: read it,
/// never write it (the mount is read-only in the copy and it holds no
/// capability to change that).
#[test]
fn a_copy_left_in_the_templates_read_only_tmp_cannot_write_there() {
    let Some(t) = setup(
        "a_copy_left_in_the_templates_read_only_tmp_cannot_write_there",
        &[],
    ) else {
        return;
    };
    let d = &t.daemon;
    let handler = r#"
import ctypes, json, os
def handle(body):
    out = {"cwd": os.getcwd(), "seen": sorted(os.listdir("."))}
    for what, f in (("create", lambda: open("new", "w")),
                    ("append", lambda: open("init-file", "a")),
                    ("mkdir", lambda: os.mkdir("d")),
                    ("chmod", lambda: os.chmod("init-file", 0o777))):
        try:
            f()
            out[what] = "ok"
        except OSError as e:
            out[what] = e.strerror
    libc = ctypes.CDLL(None, use_errno=True)
    out["remount"] = libc.syscall(442, -100, b".", 0, __import__("struct").pack("QQQQ", 0, 1, 0, 0), 32)
    return json.dumps(out)
"#;
    // The copy skips mounting a fresh /tmp and starts in the template's.
    let init = "import os\nos.makedirs('/tmp/evil', exist_ok=True)\nos.chmod('/tmp/evil', 0o777)\n\
                open('/tmp/evil/init-file', 'w').write('x')\nos.chmod('/tmp/evil/init-file', 0o666)\n\
                os.chdir('/tmp/evil')";
    let code = py(
        t.dir.path(),
        "ro-tmp",
        &evil(r#"{"fresh": False}"#, init, handler),
    );
    deploy_warm(d, "ro-tmp", &code, &[]);
    let seen = warm_json(d, "ro-tmp", b"");
    assert_eq!(seen["cwd"], "/tmp/evil", "{seen}");
    assert_eq!(seen["seen"], json!(["init-file"]), "{seen}");
    for what in ["create", "append", "mkdir", "chmod"] {
        assert_eq!(
            seen[what], "Read-only file system",
            "{what} in the template's /tmp: {seen}"
        );
    }
    assert_eq!(seen["remount"], -1, "mount_setattr succeeded: {seen}");
}

/// FINDING: alcove checks only that a copy has *more* seccomp filters than
/// its template, not which: a copy that installs a filter allowing
/// everything passes, and its requests may then `unshare` and `mount`,
/// which the copy filter (README: "forbids unshare, mount, setns,
/// pivot_root and chroot") is there to stop.
#[test]
#[ignore = "known limitation (README): alcove checks that a copy stacked a filter, not which one"]
fn a_copy_with_another_seccomp_filter_is_refused() {
    let Some(t) = setup("a_copy_with_another_seccomp_filter_is_refused", &[]) else {
        return;
    };
    let d = &t.daemon;
    let handler = r#"
import ctypes, json, os
def handle(body):
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mount.argtypes = [ctypes.c_char_p] * 3 + [ctypes.c_ulong, ctypes.c_char_p]
    flags = int(os.environ.get("FLAGS", "0"))
    out = {"unshare": libc.unshare(flags)}
    out["mount"] = libc.mount(b"tmpfs", b"/tmp", b"tmpfs", 0, None)
    out["caps"] = [l.split()[1] for l in open("/proc/self/status") if l.startswith("CapEff")]
    return json.dumps(out)
"#;
    let code = py(
        t.dir.path(),
        "allow-all",
        &evil(r#"{"seccomp": "allow"}"#, "", handler),
    );
    let flags = format!(
        "FLAGS={}",
        libc::CLONE_NEWUSER
            | libc::CLONE_NEWNS
            | libc::CLONE_NEWNET
            | libc::CLONE_NEWIPC
            | libc::CLONE_NEWUTS
            | libc::CLONE_NEWPID
    );
    let (code_, said) = deploy_py(d, "allow-all", &code, &["--warm", "--env", &flags]);
    if code_ != 0 {
        assert!(
            said.contains("seccomp"),
            "refused, but not for its filter: {said}"
        );
        return;
    }
    let seen = warm_json(d, "allow-all", b"");
    assert_eq!(
        seen["unshare"], -1,
        "a request unshared new namespaces (and got {:?} in them): {seen}",
        seen["caps"]
    );
    assert_eq!(seen["mount"], -1, "a request mounted a tmpfs: {seen}");
}

/// FINDING: alcove checks the copy process alone, once. An initialisation
/// can fork a helper right after the copy's `unshare` and before its second
/// fork: the helper becomes pid 1 of the copy's pid namespace (the copy is
/// pid 2; nothing checks that it is pid 1), stays in the template's cgroup
/// (it is never moved, stopped or checked), keeps every capability of the
/// copy's user namespace, and after the check bind-mounts the template's
/// /tmp, writable, over the copy's fresh one. Every request then reads and
/// writes the same /tmp as every other (and as the template). The helpers
/// outlive their copies, one per copy, in the template's cgroup.
#[test]
fn a_helper_in_a_copys_namespaces_cannot_share_tmp_between_requests() {
    let Some(t) = setup(
        "a_helper_in_a_copys_namespaces_cannot_share_tmp_between_requests",
        &[],
    ) else {
        return;
    };
    let d = &t.daemon;
    let opts = r#"{"before_fresh": """
os.environ["EVIL_TMPFD"] = str(os.open("/tmp", os.O_PATH | os.O_DIRECTORY))
""",
"before_fork2": """
fd = int(os.environ["EVIL_TMPFD"])
if os.fork() == 0:
    try:
        time.sleep(0.5)
        self.mount(f"/proc/self/fd/{fd}", "/tmp", None, rt.MS_BIND, None)
        self.mount_setattr("/tmp", False, 0, rt.MOUNT_ATTR_RDONLY)
    except BaseException:
        pass
    while True:
        time.sleep(1000)
os.close(fd)
"""}"#;
    let handler = r#"
import json, os
def handle(body):
    seen = sorted(os.listdir("/tmp"))
    open("/tmp/left-by-" + body.decode(), "w").write("x")
    return json.dumps({"pid": os.getpid(), "seen": seen,
                       "procs": sorted(int(p) for p in os.listdir("/proc") if p.isdigit())})
"#;
    let code = py(t.dir.path(), "helper", &evil(opts, "", handler));
    let (status, said) = deploy_py(d, "helper", &code, &["--warm"]);
    if status != 0 {
        assert!(said.contains("refused"), "{said}");
        return;
    }
    std::thread::sleep(Duration::from_secs(1));
    let first = warm_json(d, "helper", b"A");
    std::thread::sleep(Duration::from_secs(1));
    let second = warm_json(d, "helper", b"B");
    assert_eq!(
        second["seen"],
        json!([]),
        "request B saw what request A left in /tmp (A: {first}, B: {second})"
    );
    assert_eq!(second["procs"], json!([1]), "{second}");
}

// ---- helpers left in the template ---------------------------------------------

#[test]
fn a_helper_left_in_the_template_is_out_of_its_copies_reach() {
    let Some(t) = setup(
        "a_helper_left_in_the_template_is_out_of_its_copies_reach",
        &[],
    ) else {
        return;
    };
    let d = &t.daemon;
    // The initialisation forks a helper that stays in the template,
    // listening on an abstract socket, a socket in the template's /tmp and
    // a loopback port, and logging any connection.
    let source = r#"
import json, os, socket, time
HELPER = os.fork()
if HELPER == 0:
    a = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM); a.bind("\0evil-helper"); a.listen(8)
    p = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM); p.bind("/tmp/helper.sock"); p.listen(8)
    os.chmod("/tmp/helper.sock", 0o777)
    t = socket.socket(); t.bind(("127.0.0.1", 47999)); t.listen(8)
    log = open("/tmp/helper.log", "a", buffering=1)
    log.write("listening\n")
    for s in (a, p, t):
        s.setblocking(False)
    while True:
        for s, name in ((a, "abstract"), (p, "path"), (t, "tcp")):
            try:
                c, _ = s.accept(); log.write(f"accepted {name}\n"); c.close()
            except BlockingIOError:
                pass
        time.sleep(0.02)
def handle(body):
    out = {"pid": os.getpid()}
    for name, fam, addr in (("abstract", socket.AF_UNIX, "\0evil-helper"),
                            ("path", socket.AF_UNIX, "/tmp/helper.sock"),
                            ("tcp", socket.AF_INET, ("127.0.0.1", 47999))):
        s = socket.socket(fam, socket.SOCK_STREAM)
        try:
            s.connect(addr); out[name] = "connected"
        except OSError as e:
            out[name] = e.strerror
        s.close()
    try:
        os.kill(HELPER, 0); out["kill"] = "ok"
    except OSError as e:
        out["kill"] = e.strerror
    out["procs"] = sorted(int(p) for p in os.listdir("/proc") if p.isdigit())
    return json.dumps(out)
"#;
    let code = py(t.dir.path(), "helper", source);
    deploy_warm(d, "helper", &code, &[]);
    let template = template_pid(d.child.id() as i32, "helper").expect("a template");
    let log = format!("/proc/{template}/root/tmp/helper.log");
    wait_until("the helper listens", Duration::from_secs(5), || {
        std::fs::read_to_string(&log).is_ok_and(|l| l.contains("listening"))
    });
    for _ in 0..3 {
        let seen = warm_json(d, "helper", b"");
        assert_eq!(seen["abstract"], "Connection refused", "{seen}");
        assert_eq!(seen["path"], "No such file or directory", "{seen}");
        assert_eq!(seen["tcp"], "Connection refused", "{seen}");
        assert_eq!(seen["kill"], "No such process", "{seen}");
        assert_eq!(seen["procs"], json!([1]), "{seen}");
    }
    std::thread::sleep(Duration::from_millis(100));
    let log = std::fs::read_to_string(&log).unwrap();
    assert_eq!(log, "listening\n", "a copy reached the helper: {log}");
}

// ---- a hostile request ----------------------------------------------------------

#[test]
fn a_hostile_request_stays_confined_and_the_next_copy_is_clean() {
    let Some(t) = setup(
        "a_hostile_request_stays_confined_and_the_next_copy_is_clean",
        &[],
    ) else {
        return;
    };
    let d = &t.daemon;
    let source = r#"
import ctypes, errno, json, os, socket
libc = ctypes.CDLL(None, use_errno=True)
libc.mount.argtypes = [ctypes.c_char_p] * 3 + [ctypes.c_ulong, ctypes.c_char_p]
libc.syscall.restype = ctypes.c_long
NS = 0x10000000 | 0x20000 | 0x40000000 | 0x08000000 | 0x04000000 | 0x20000000
def err(rc):
    return "ok" if rc == 0 else errno.errorcode.get(ctypes.get_errno(), str(ctypes.get_errno()))
def attempt(f):
    try:
        return f()
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e.errno))
def walk():
    for root, dirs, files in os.walk("/", topdown=True):
        if root in ("/proc", "/sys") or root.startswith(("/proc/", "/sys/")):
            dirs[:] = []
            continue
        dirs[:] = [d for d in dirs if not os.path.islink(os.path.join(root, d))][:200]
        yield root, files
def handle(body):
    out = {"pid": os.getpid()}
    if body == b"look":
        out["leftovers"] = sorted(os.path.join(r, f) for r, files in walk() for f in files
                                  if f == "left-behind")
        out["procs"] = sorted(int(p) for p in os.listdir("/proc") if p.isdigit())
        s = socket.socket()
        out["port"] = attempt(lambda: s.connect(("127.0.0.1", 47555)) or "connected")
        return json.dumps(out)
    out["unshare"] = err(libc.unshare(NS))
    out["unshare_user"] = err(libc.unshare(0x10000000))
    out["mount"] = err(libc.mount(b"tmpfs", b"/tmp", b"tmpfs", 0, None))
    out["umount"] = err(libc.umount2(b"/tmp", 2))
    out["chroot"] = err(libc.chroot(b"/tmp"))
    out["mount_setattr"] = err(libc.syscall(442, -100, b"/", 0x8000, bytes(32), 32))
    for ns in ("user", "mnt", "net", "pid", "ipc", "uts"):
        def setns(ns=ns):
            fd = os.open(f"/proc/1/ns/{ns}", os.O_RDONLY)
            try:
                return err(libc.setns(fd, 0))
            finally:
                os.close(fd)
        out["setns_" + ns] = attempt(setns)
    out["ptrace"] = err(libc.ptrace(16, 1, 0, 0))
    rc = libc.syscall(56, ctypes.c_ulong(0x10000000 | 17), ctypes.c_ulong(0), 0, 0, 0)
    if rc == 0:
        os._exit(0)
    out["clone_newuser"] = "ok" if rc > 0 else err(-1)
    out["caps"] = [l.split()[1] for l in open("/proc/self/status") if l.startswith(("CapEff", "CapBnd"))]
    writable = []
    for root, _ in walk():
        try:
            with open(os.path.join(root, "left-behind"), "x") as f:
                f.write("x")
            writable.append(root)
        except OSError:
            pass
    out["writable"] = writable
    # a port, held by a daemonised grandchild, for the next copy to find
    ls = socket.socket()
    ls.bind(("127.0.0.1", 47555))
    ls.listen(8)
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            os.set_inheritable(ls.fileno(), True)
            os.execvp("sleep", ["sleep", "41.5173"])
        os._exit(0)
    return json.dumps(out)
"#;
    let code = py(t.dir.path(), "hostile", source);
    deploy_warm(d, "hostile", &code, &[]);
    for round in 0..2 {
        let seen = warm_json(d, "hostile", b"attack");
        for key in [
            "unshare",
            "unshare_user",
            "mount",
            "umount",
            "chroot",
            "mount_setattr",
            "setns_user",
            "setns_mnt",
            "setns_net",
            "setns_pid",
            "setns_ipc",
            "setns_uts",
            "ptrace",
            "clone_newuser",
        ] {
            assert_eq!(seen[key], "EPERM", "round {round}: {key}: {seen}");
        }
        assert_eq!(
            seen["caps"],
            json!(["0000000000000000", "0000000000000000"]),
            "{seen}"
        );
        assert_eq!(
            seen["writable"],
            json!(["/tmp", "/dev/shm"]),
            "a copy can write elsewhere: {seen}"
        );
        let next = warm_json(d, "hostile", b"look");
        assert_eq!(next["leftovers"], json!([]), "round {round}: {next}");
        assert_eq!(next["procs"], json!([1]), "round {round}: {next}");
        assert_eq!(next["port"], "ECONNREFUSED", "round {round}: {next}");
        wait_until(
            "the daemonised leftover is gone from the host",
            Duration::from_secs(2),
            || processes_with("sleep 41.5173").is_empty(),
        );
    }
}

#[test]
fn a_copy_that_abuses_its_connection_to_alcove_misleads_no_one() {
    let Some(t) = setup(
        "a_copy_that_abuses_its_connection_to_alcove_misleads_no_one",
        &[],
    ) else {
        return;
    };
    let d = &t.daemon;
    let source = r#"
import os, socket, stat, sys, time
def conn_fd():
    for fd in os.listdir("/proc/self/fd"):
        try:
            if stat.S_ISSOCK(os.fstat(int(fd)).st_mode):
                return int(fd)
        except OSError:
            pass
def handle(body):
    what = body.decode()
    fd = conn_fd()
    s = socket.socket(fileno=os.dup(fd))
    t = time.monotonic_ns()
    if what == "garbage":
        s.send(b"\xff\x00garbage" * 100)
    elif what == "big":
        s.send(b"x" * 200000)
    elif what == "many":
        for i in range(10000):
            try:
                s.send(b"exit 7 1 2", socket.MSG_DONTWAIT)
            except OSError:
                break
    elif what == "close":
        os.close(fd)
        s.close()
    elif what == "shutdown":
        s.shutdown(socket.SHUT_RDWR)
    elif what == "fds":
        # descriptors of its own (see the finding below for its stdout's)
        r, w = os.pipe()
        for i in range(20):
            try:
                socket.send_fds(s, [b"exit 0 1 2"], [r, w], socket.MSG_DONTWAIT)
            except OSError:
                break
    elif what == "linger":
        sys.stdout.write("before its report\n")
        sys.stdout.flush()
        s.send(f"exit 0 {t} {t}".encode())
        time.sleep(30)
        return "never"
    else:
        return "plain"
    time.sleep(3)
    return "it went on"
"#;
    let code = py(t.dir.path(), "conn", source);
    deploy_warm(d, "conn", &code, &[]);
    let daemon = d.child.id();
    let fds_before = open_descriptors(daemon);
    for what in [
        "garbage", "big", "close", "shutdown", "many", "fds", "linger",
    ] {
        let started = Instant::now();
        let reply = invoke(d, "conn", what.as_bytes());
        let took = started.elapsed();
        assert_eq!(start(&reply), "warm", "{what}: {:?}", reply.headers);
        match what {
            // No report in what it sent: alcove waits for the copy's own end
            // (within the function's limits) and says how it ended.
            // Before Linux 6.15 the kernel keeps no exit status alcove can
            // read for a copy: its end is then "without saying how".
            "garbage" | "big" | "close" | "shutdown" => {
                if common::kernel_keeps_exit_on_pidfds() {
                    assert_eq!(reply.text(), "it went on", "{what}");
                } else {
                    assert!(
                        reply.text().contains("ended without saying how"),
                        "{what}: {}",
                        reply.text()
                    );
                }
                eprintln!("{what}: answered in {took:?}");
            }
            // A report: the copy is killed at once, whatever it does next
            // (it would answer "it went on" three seconds later).
            _ => {
                eprintln!("{what}: answered in {took:?}");
                assert_ne!(reply.text(), "it went on", "{what}");
                assert_eq!(status(&reply), "exited", "{what}: {}", reply.text());
            }
        }
        match what {
            "many" => assert_eq!(reply.header("x-alcove-exit-code"), Some("7")),
            "linger" => assert_eq!(reply.text(), "before its report\n"),
            _ => {}
        }
        // The next invocation is clean and warm.
        let next = invoke(d, "conn", b"");
        assert_eq!(next.status, 200, "after {what}: {}", next.text());
        assert_eq!(start(&next), "warm", "after {what}: {:?}", next.headers);
        assert_eq!(next.text(), "plain");
    }
    // Descriptors sent to alcove are not kept by it.
    std::thread::sleep(Duration::from_millis(300));
    let fds_after = open_descriptors(daemon);
    assert!(
        fds_after < fds_before + 20,
        "the daemon holds {fds_before} descriptors before, {fds_after} after"
    );
    // No copy lingers: the template and at most its ready copies remain.
    wait_until("the used copies are gone", Duration::from_secs(5), || {
        function_processes("conn").len() <= 1 + 8
    });
}

/// FINDING: a copy can make its invocation outlive every limit. It sends a
/// message that is not a report (alcove stops reading its connection until
/// the copy ends), then more messages than alcove reads at the end (8), each
/// carrying its stdout and stderr (SCM_RIGHTS). The ones left in alcove's
/// receive queue hold the write ends of the invocation's output pipes open,
/// so alcove waits for their end of file forever: past --timeout, past `fn
/// cancel`, and `fn rm --force` gives up ("did not end within 10s of being
/// cancelled"). Each such invocation keeps a daemon thread and a concurrency
/// slot until the daemon stops.
#[test]
fn a_copy_cannot_keep_its_invocation_past_its_timeout() {
    let Some(t) = setup("a_copy_cannot_keep_its_invocation_past_its_timeout", &[]) else {
        return;
    };
    let d = &t.daemon;
    let source = r#"
import os, socket, stat, time
def handle(body):
    fd = next(int(f) for f in os.listdir("/proc/self/fd") if stat.S_ISSOCK(os.fstat(int(f)).st_mode))
    s = socket.socket(fileno=os.dup(fd))
    s.send(b"not a report")
    time.sleep(0.2)
    for i in range(50):
        try:
            socket.send_fds(s, [b"x"], [1, 2], socket.MSG_DONTWAIT)
        except OSError:
            break
    return "queued"
"#;
    let code = py(t.dir.path(), "stuck", source);
    deploy_warm(d, "stuck", &code, &["--timeout", "2s"]);
    let bearer = format!("Bearer {}", d.token.as_deref().unwrap());
    let addr = d.addr.clone();
    let (done, waited) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let reply = common::daemon::http(
            &addr,
            "POST",
            "/v1/functions/stuck/invoke",
            &[("authorization", &bearer)],
            b"",
        );
        let _ = done.send(reply.status);
    });
    let ended = waited.recv_timeout(Duration::from_secs(15));
    assert!(
        ended.is_ok(),
        "the invocation was still running 15 s after its 2 s timeout"
    );
    wait_until("no invocation is in flight", Duration::from_secs(5), || {
        d.cli_json(&["ps"])["invocations"]
            .as_array()
            .is_some_and(|a| a.is_empty())
    });
}

/// A request that connects to alcove's copy socket (it is visible in every
/// copy, at ALCOVE_COPY_SOCKET) is not taken for a copy: it is no longer in
/// the template's cgroup.
#[test]
fn a_request_posing_as_a_new_copy_is_refused_and_killed() {
    let Some(t) = setup("a_request_posing_as_a_new_copy_is_refused_and_killed", &[]) else {
        return;
    };
    let d = &t.daemon;
    let code = py(t.dir.path(), "pose", RECONNECT);
    deploy_warm(d, "pose", &code, &[]);
    let reply = invoke(d, "pose", b"1");
    assert_eq!(start(&reply), "warm");
    assert_eq!(status(&reply), "signaled", "{}", reply.text());
    let log = daemon_log(d);
    assert!(
        log.contains("refused a connection: process")
            && log.contains("did not come from this template"),
        "{log}"
    );
    let next = invoke(d, "pose", b"");
    assert_eq!(next.status, 200, "{}", next.text());
    assert_eq!(start(&next), "warm");
    assert_eq!(next.text(), "plain");
}

/// A handler that connects to alcove's copy socket N times (body "N"), or N
/// times without saying `copy` (body "sN"), and holds the connections.
const RECONNECT: &str = r#"
import os, socket, time
def handle(body):
    if not body:
        return "plain"
    say = not body.startswith(b"s")
    conns = []
    for i in range(int(body.lstrip(b"s"))):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        s.connect(os.environ.get("ALCOVE_COPY_SOCKET", "/run/alcove/copy.sock"))
        if say:
            s.send(b"copy")
        conns.append(s)
    time.sleep(5)
    return "held"
"#;

/// FINDING: a single request can make alcove give its function's template
/// up. Connections to the copy socket from a used copy are counted as
/// refused copies of the template; five in a row close the template (its
/// ready copies are killed) and it is rebuilt, its initialisation run again.
#[test]
fn a_request_cannot_make_alcove_give_the_template_up() {
    let Some(t) = setup("a_request_cannot_make_alcove_give_the_template_up", &[]) else {
        return;
    };
    let d = &t.daemon;
    let code = py(t.dir.path(), "pose", RECONNECT);
    deploy_warm(d, "pose", &code, &[]);
    let template = template_pid(d.child.id() as i32, "pose");
    assert!(template.is_some());
    let _ = invoke(d, "pose", b"6");
    std::thread::sleep(Duration::from_millis(500));
    let log = daemon_log(d);
    assert!(
        !log.contains("its template is gone"),
        "one request closed the template: {log}"
    );
    assert_eq!(
        template_pid(d.child.id() as i32, "pose"),
        template,
        "the template was replaced"
    );
}

/// FINDING: a connection to the copy socket that never says `copy` holds
/// the function's filler for a second (alcove waits that long for the word),
/// during which no copy is made for anyone; the request that made it is not
/// killed, and can make as many as the socket's backlog holds.
#[test]
fn silent_connections_to_the_copy_socket_do_not_stall_other_requests() {
    let Some(t) = setup(
        "silent_connections_to_the_copy_socket_do_not_stall_other_requests",
        &[],
    ) else {
        return;
    };
    let d = &t.daemon;
    let code = py(t.dir.path(), "pose", RECONNECT);
    deploy_warm(d, "pose", &code, &[]);
    let bearer = format!("Bearer {}", d.token.as_deref().unwrap());
    let addr = d.addr.clone();
    let silent = std::thread::spawn(move || {
        common::daemon::http(
            &addr,
            "POST",
            "/v1/functions/pose/invoke",
            &[("authorization", &bearer)],
            b"s3",
        )
    });
    std::thread::sleep(Duration::from_millis(500));
    let mut slowest = Duration::ZERO;
    for _ in 0..3 {
        let started = Instant::now();
        let other = invoke(d, "pose", b"");
        assert_eq!(other.text(), "plain");
        slowest = slowest.max(started.elapsed());
    }
    let _ = silent.join();
    // Not a speed check: before the fix each silent connection held copy-making
    // for a whole second, so three made a request wait about three.
    assert!(
        slowest < Duration::from_secs(2),
        "a request waited {slowest:?} while another held silent connections to the copy socket"
    );
}

// ---- hostile deploys -------------------------------------------------------------

enum E<'a> {
    File(&'a str, &'a [u8]),
    Symlink(&'a str, &'a str),
    Hardlink(&'a str, &'a str),
}

fn tar(entries: &[E]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = tar::Header::new_gnu();
        h.set_mtime(1_700_000_000);
        match e {
            E::File(name, data) => {
                h.set_mode(0o644);
                h.set_size(data.len() as u64);
                b.append_data(&mut h, OsStr::from_bytes(name.as_bytes()), *data)
                    .unwrap();
            }
            E::Symlink(name, to) => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_mode(0o777);
                h.set_size(0);
                b.append_link(&mut h, name, to).unwrap();
            }
            E::Hardlink(name, to) => {
                h.set_entry_type(tar::EntryType::Link);
                h.set_mode(0o644);
                h.set_size(0);
                b.append_link(&mut h, name, to).unwrap();
            }
        }
    }
    b.into_inner().unwrap()
}

/// `POST /v1/functions` with a warm Python body and `more` fields.
fn api_deploy(d: &Daemon, name: &str, code: &[u8], entry: &str, more: Value) -> Reply {
    let mut body = json!({
        "name": name,
        "code": base64::engine::general_purpose::STANDARD.encode(code),
        "runtime": "python",
        "entry": entry,
        "warm": true,
    });
    for (k, v) in more.as_object().unwrap() {
        body[k] = v.clone();
    }
    d.http("POST", "/v1/functions", body.to_string().as_bytes())
}

fn error_message(reply: &Reply) -> String {
    reply.json()["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

const SERVES: &[u8] = b"def handle(body):\n    return 'served'\n";

#[test]
fn hostile_deploy_settings_are_refused_with_clear_messages() {
    let Some(t) = setup(
        "hostile_deploy_settings_are_refused_with_clear_messages",
        &[],
    ) else {
        return;
    };
    let d = &t.daemon;
    let code = py(t.dir.path(), "code", std::str::from_utf8(SERVES).unwrap());
    std::os::unix::fs::symlink("main.py", code.join("inner.py")).unwrap();
    std::fs::create_dir_all(code.join("sub")).unwrap();
    let cli = |extra: &[&str]| {
        let mut args = vec!["deploy", "x", "--code", code.to_str().unwrap()];
        args.extend_from_slice(extra);
        let (status, out, err) = d.cli(&args);
        assert_ne!(status, 0, "{extra:?} was deployed: {out}");
        err
    };
    let py_warm = |more: &[&'static str]| {
        let mut v = vec!["--runtime", "python", "--warm"];
        v.extend_from_slice(more);
        v
    };
    for (extra, words) in [
        (
            py_warm(&["--entry", "../x.py"]),
            "entry \"../x.py\": give a .py file of the code, by a relative path",
        ),
        (
            py_warm(&["--entry", "/etc/passwd"]),
            "entry \"/etc/passwd\": give a .py file",
        ),
        (
            py_warm(&["--entry", "/fn/main.py"]),
            "entry \"/fn/main.py\": give a .py file",
        ),
        (
            py_warm(&["--entry", "sub/../main.py"]),
            "entry \"sub/../main.py\": give a .py file",
        ),
        (
            py_warm(&["--entry", "sub"]),
            "entry \"sub\": give a .py file",
        ),
        (py_warm(&["--entry", ""]), "entry \"\": give a .py file"),
        (
            vec!["--runtime", "ruby", "--entry", "main.py", "--warm"],
            "runtime \"ruby\": alcove provides \"python\"",
        ),
        (
            py_warm(&["--entry", "main.py", "--handler", "x"]),
            "'--runtime <NAME>' cannot be used with '--handler <COMMAND>'",
        ),
        (
            py_warm(&["--entry", "main.py", "--init-timeout", "0s"]),
            "a duration must be positive",
        ),
        (
            py_warm(&["--entry", "main.py", "--init-timeout", "1000h"]),
            "init timeout 3600000000 ms: use 1 ms to 600 s",
        ),
        (
            py_warm(&["--entry", "main.py", "--user", "0"]),
            "a warm function cannot run as uid 0",
        ),
        (
            py_warm(&["--entry", "main.py", "--user", "0:0"]),
            "a warm function cannot run as uid 0",
        ),
        (
            py_warm(&["--entry", "main.py", "--user", "00"]),
            "a warm function cannot run as uid 0",
        ),
        (
            py_warm(&["--entry", "main.py", "--accel", "cpu"]),
            "a warm function cannot use --accel",
        ),
        (
            py_warm(&["--entry", "nope.py"]),
            "ENTRY 'nope.py' is missing or not a .py file",
        ),
    ] {
        let said = cli(&extra);
        assert!(said.contains(words), "{extra:?}: {words:?} not in: {said}");
    }
    assert!(!exists(d, "x"), "a refused deploy left a version");

    // An entry that is a link inside the code is followed, inside /fn.
    let (status, said, _) = d.cli(&[
        "deploy",
        "inner",
        "--code",
        code.to_str().unwrap(),
        "--runtime",
        "python",
        "--entry",
        "inner.py",
        "--warm",
    ]);
    assert_eq!(status, 0, "{said}");
    let reply = invoke(d, "inner", b"");
    assert_eq!(start(&reply), "warm");
    assert_eq!(reply.text(), "served");

    // Archives sent to the API: links out of the code are refused before
    // anything runs.
    for (entries, entry, words) in [
        (
            vec![
                E::File("real.py", SERVES),
                E::Symlink("main.py", "/etc/passwd"),
            ],
            "main.py",
            "main.py -> /etc/passwd leaves the code directory",
        ),
        (
            vec![
                E::File("real.py", SERVES),
                E::Symlink("main.py", "../../../../etc/passwd"),
            ],
            "main.py",
            "main.py -> ../../../../etc/passwd leaves the code directory",
        ),
        (
            vec![E::File("real.py", SERVES), E::Symlink("d", "/etc")],
            "d/passwd.py",
            "d -> /etc leaves the code directory",
        ),
        (
            vec![
                E::File("real.py", SERVES),
                E::Hardlink("main.py", "/etc/passwd"),
            ],
            "main.py",
            "main.py is a hard link",
        ),
    ] {
        let reply = api_deploy(d, "api", &tar(&entries), entry, json!({}));
        assert_eq!(reply.status, 400, "{entry}: {}", reply.text());
        assert_eq!(reply.code(), "invalid_code", "{}", reply.text());
        assert!(
            error_message(&reply).contains(words),
            "{words:?} not in {}",
            reply.text()
        );
    }
    let plain = tar(&[E::File("main.py", SERVES)]);
    for (more, words) in [
        (
            json!({"init_timeout_ms": 0}),
            "init timeout 0 ms: use 1 ms to 600 s",
        ),
        (
            json!({"init_timeout_ms": u64::MAX}),
            "init timeout 18446744073709551615 ms: use 1 ms to 600 s",
        ),
        (
            json!({"handler": ["x"]}),
            "runtime \"python\" and handler [\"x\"]: give one",
        ),
        (json!({"user": "0"}), "a warm function cannot run as uid 0"),
        (
            json!({"accel": "gpu"}),
            "a warm function cannot use --accel",
        ),
    ] {
        let reply = api_deploy(d, "api", &plain, "main.py", more.clone());
        assert_eq!(reply.status, 400, "{more}: {}", reply.text());
        assert!(
            error_message(&reply).contains(words),
            "{more}: {words:?} not in {}",
            reply.text()
        );
    }
    assert!(!exists(d, "api"), "a refused deploy left a version");
}

/// FINDING: the uid-0 refusal compares the text of `user` with "0", so the
/// API's `"00"`, `"+0"` or `"0000:5"` (all uid 0) pass it: the template
/// starts as uid 0, every copy fails to map it, and the deploy fails after
/// 10 s with "a copy failed at step 2: Operation not permitted" instead of
/// the clear refusal. (A too-short `--init-timeout 1ms` is also reported as
/// "did not say ready within 0 s".)
#[test]
fn uid_0_spelled_otherwise_is_refused_at_once() {
    let Some(t) = setup("uid_0_spelled_otherwise_is_refused_at_once", &[]) else {
        return;
    };
    let d = &t.daemon;
    let plain = tar(&[E::File("main.py", SERVES)]);
    for user in ["00", "+0", "0000:5"] {
        let started = Instant::now();
        let reply = api_deploy(d, "root", &plain, "main.py", json!({ "user": user }));
        assert_eq!(reply.status, 400, "{user}: {}", reply.text());
        assert!(
            error_message(&reply).contains("cannot run as uid 0"),
            "{user}: {}",
            reply.text()
        );
        // Refused at the deploy's check, not after a template's 10-s wait.
        assert!(started.elapsed() < Duration::from_secs(5), "{user}");
    }
}

#[test]
fn a_spent_warm_memory_budget_refuses_deploys_and_keeps_the_daemon() {
    let Some(t) = setup(
        "a_spent_warm_memory_budget_refuses_deploys_and_keeps_the_daemon",
        &["--warm-memory", "1M"],
    ) else {
        return;
    };
    let d = &t.daemon;
    let code = py(t.dir.path(), "code", std::str::from_utf8(SERVES).unwrap());
    let rss_before = rss_kib(d.child.id());
    let said: Vec<(i32, String)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..12)
            .map(|i| {
                let code = &code;
                s.spawn(move || deploy_py(d, &format!("b{i}"), code, &["--warm"]))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (i, (status, text)) in said.iter().enumerate() {
        assert_ne!(*status, 0, "b{i} was deployed past the budget: {text}");
        assert!(
            text.contains("the warm memory budget (1M) is spent") && text.contains("--warm-memory"),
            "b{i}: {text}"
        );
        assert!(!exists(d, &format!("b{i}")), "b{i} left a version");
    }
    for i in 0..12 {
        wait_until(
            "the refused templates are gone",
            Duration::from_secs(5),
            || function_processes(&format!("b{i}")).is_empty(),
        );
    }
    // The daemon is whole: a cold deploy of the same code serves.
    let (status, text) = deploy_py(d, "cold", &code, &[]);
    assert_eq!(status, 0, "{text}");
    let reply = invoke(d, "cold", b"");
    assert_eq!(reply.text(), "served");
    assert_eq!(start(&reply), "cold");
    let rss_after = rss_kib(d.child.id());
    assert!(
        rss_after < rss_before + 64 * 1024,
        "the daemon grew from {rss_before} KiB to {rss_after} KiB"
    );
}

/// FINDING: when the budget holds the template but not its first copy, a
/// warm deploy waits the whole first-copy timeout (10 s, under the daemon's
/// one deploy lock) and then says "the template made no copy within 10 s",
/// not that the budget is spent. (100 parallel warm deploys against
/// `--warm-memory 64M`: 8 deployed, 92 failed that way, one after another,
/// the last after 15 minutes.)
#[test]
fn a_budget_with_no_room_for_a_copy_is_named_at_once() {
    if !common::root_or_skip("a_budget_with_no_room_for_a_copy_is_named_at_once") {
        return;
    }
    let _serial = common::serial();
    let dir = tempfile::tempdir().unwrap();
    let code = py(dir.path(), "code", std::str::from_utf8(SERVES).unwrap());
    // Somewhere between "no room for the template" and "room for both" is a
    // budget with room for the template alone (10M to 12M for this one).
    for mib in 6..=20 {
        let budget = format!("{mib}M");
        let d = Daemon::start(&dir.path().join(&budget), &["--warm-memory", &budget]);
        let started = Instant::now();
        let (status, said) = deploy_py(&d, "tight", &code, &["--warm"]);
        if status == 0 {
            return; // room for both from here on
        }
        assert!(
            said.contains("warm memory budget"),
            "--warm-memory {budget}: {said}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "--warm-memory {budget}: the refusal took {:?}",
            started.elapsed()
        );
    }
}

/// FINDING: a warm deploy holds the daemon's one deploy lock while its
/// initialisation runs (up to --init-timeout, at most 10 minutes) and while
/// it waits for a first copy: every other deploy, config change and removal,
/// of any function, waits behind it.
#[test]
#[ignore = "known limitation (README): a warm deploy holds the deploy lock through its initialisation"]
fn a_slow_warm_initialisation_does_not_hold_other_deploys() {
    let Some(t) = setup(
        "a_slow_warm_initialisation_does_not_hold_other_deploys",
        &[],
    ) else {
        return;
    };
    let d = &t.daemon;
    let slow = py(
        t.dir.path(),
        "slow",
        "import time\ntime.sleep(8)\ndef handle(body):\n    return 'slow'\n",
    );
    let other = py(t.dir.path(), "other", std::str::from_utf8(SERVES).unwrap());
    std::thread::scope(|s| {
        let slow = s.spawn(|| deploy_py(d, "slow", &slow, &["--warm", "--init-timeout", "30s"]));
        std::thread::sleep(Duration::from_millis(500));
        let started = Instant::now();
        let (status, said) = deploy_py(d, "other", &other, &[]);
        let took = started.elapsed();
        assert_eq!(status, 0, "{said}");
        assert_eq!(slow.join().unwrap().0, 0);
        assert!(
            took < Duration::from_secs(3),
            "a cold deploy of another function waited {took:?} for a warm one's initialisation"
        );
    });
}

#[test]
fn an_initialisation_that_floods_its_output_leaves_the_daemon_bounded() {
    let Some(t) = setup(
        "an_initialisation_that_floods_its_output_leaves_the_daemon_bounded",
        &[],
    ) else {
        return;
    };
    let d = &t.daemon;
    let daemon = d.child.id();
    let rss_before = rss_kib(daemon);
    // 200 MiB on each of stdout and stderr at init, errors ignored, and a
    // helper that goes on writing once the template is ready.
    let source = r#"
import os, time
chunk = b"x" * (1 << 20)
def flood(mb):
    for i in range(mb):
        for fd in (1, 2):
            try:
                os.write(fd, chunk)
            except OSError:
                pass
flood(200)
if os.fork() == 0:
    while True:
        flood(50)
        time.sleep(0.05)
def handle(body):
    print("y" * 100000)
    return "flooded"
"#;
    let code = py(t.dir.path(), "flood", source);
    deploy_warm(d, "flood", &code, &[]);
    for _ in 0..3 {
        let reply = invoke(d, "flood", b"");
        assert_eq!(reply.status, 200, "{}", reply.text());
        assert_eq!(start(&reply), "warm");
        assert!(reply.text().ends_with("flooded"), "{}", reply.text().len());
    }
    std::thread::sleep(Duration::from_secs(2));
    let rss_after = rss_kib(daemon);
    assert!(
        rss_after < rss_before + 64 * 1024,
        "the daemon grew from {rss_before} KiB to {rss_after} KiB"
    );

    // An initialisation that dies of its flood is reported with a bounded stderr.
    let code = py(
        t.dir.path(),
        "drown",
        "import os\nfor i in range(200):\n    os.write(2, b'x' * (1 << 20))\ndef handle(body):\n    return ''\n",
    );
    let said = refused_warm(d, "drown", &code, &[]);
    assert!(
        said.contains("the function's initialisation ended before it said ready"),
        "{}",
        &said[..said.len().min(400)]
    );
    assert!(said.len() < 1 << 20, "the refusal is {} bytes", said.len());
    assert!(!exists(d, "drown"));
}

#[test]
fn an_initialisation_that_forks_without_end_meets_the_pids_limit() {
    let Some(t) = setup(
        "an_initialisation_that_forks_without_end_meets_the_pids_limit",
        &[],
    ) else {
        return;
    };
    let d = &t.daemon;
    let source = r#"
import os, sys, time
made, err = 0, None
for i in range(10000):
    try:
        pid = os.fork()
    except OSError as e:
        err = e
        break
    if pid == 0:
        time.sleep(3600)
        os._exit(0)
    made += 1
sys.stderr.write(f"init made {made} processes, then {err}\n")
def handle(body):
    return "forked"
"#;
    let code = py(t.dir.path(), "forks", source);
    let said = refused_warm(d, "forks", &code, &["--pids", "64"]);
    assert!(said.contains("init made "), "{said}");
    assert!(
        said.contains("Resource temporarily unavailable") && said.contains("fork failed"),
        "{said}"
    );
    let made: u32 = said
        .split("init made ")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap();
    assert!(made < 100, "the template made {made} processes");
    assert!(!exists(d, "forks"));
    wait_until(
        "the template's processes are gone",
        Duration::from_secs(5),
        || function_processes("forks").is_empty(),
    );
}

#[test]
fn a_template_that_ignores_fork_or_copies_that_never_connect_fail_the_deploy() {
    let Some(t) = setup(
        "a_template_that_ignores_fork_or_copies_that_never_connect_fail_the_deploy",
        &[],
    ) else {
        return;
    };
    let d = &t.daemon;
    let daemon = d.child.id();
    let threads = || {
        std::fs::read_dir(format!("/proc/{daemon}/task"))
            .unwrap()
            .count()
    };
    // Threads alcove starts once (a copy's teardown worker) exist by now.
    let fine = py(t.dir.path(), "fine", std::str::from_utf8(SERVES).unwrap());
    deploy_warm(d, "fine", &fine, &[]);
    assert_eq!(invoke(d, "fine", b"").text(), "served");
    std::thread::sleep(Duration::from_millis(300));
    let threads_before = threads();
    let deaf = r#"
import alcove_runtime as rt, time
def _deaf(self, handle):
    self.control.send(b"ready")
    while True:
        time.sleep(1000)
rt.Template.run = _deaf
def handle(body):
    return "deaf"
"#;
    let never = r#"
import alcove_runtime as rt, time
def _never(self, handle):
    time.sleep(100000)
    return 0
rt.Template.copy = _never
def handle(body):
    return "never"
"#;
    for (name, source) in [("deaf", deaf), ("never", never)] {
        let code = py(t.dir.path(), name, source);
        let started = Instant::now();
        let said = refused_warm(d, name, &code, &[]);
        assert!(
            said.contains("the template made no copy within 10 s"),
            "{name}: {said}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{name}: {:?}",
            started.elapsed()
        );
        assert!(!exists(d, name));
        wait_until(
            &format!("{name}'s template and copies are gone"),
            Duration::from_secs(5),
            || function_processes(name).is_empty(),
        );
    }
    wait_until(
        "the daemon's template threads are gone",
        Duration::from_secs(5),
        || threads() <= threads_before,
    );
}

// ---- the API ----------------------------------------------------------------------

#[test]
fn patching_rolling_back_and_removing_a_warm_function() {
    let Some(t) = setup("patching_rolling_back_and_removing_a_warm_function", &[]) else {
        return;
    };
    let d = &t.daemon;
    let daemon = d.child.id();
    let source = r#"
import os, time
def handle(body):
    if body == b"sleep":
        time.sleep(30)
    return os.environ["ALCOVE_VERSION"]
"#;
    let code = py(t.dir.path(), "api", source);
    deploy_warm(d, "api", &code, &[]); // version 1
    let kind = |expect_version: &str| {
        let reply = invoke(d, "api", b"");
        assert_eq!(reply.status, 200, "{}", reply.text());
        assert_eq!(reply.text(), expect_version);
        start(&reply).to_owned()
    };
    assert_eq!(kind("1"), "warm");

    // PATCH warm: false, a new version without a template.
    let reply = d.http("PATCH", "/v1/functions/api", br#"{"warm": false}"#);
    assert!(matches!(reply.status, 200 | 201), "{}", reply.text());
    assert_eq!(kind("2"), "cold");
    wait_until("the template stops", Duration::from_secs(5), || {
        template_pid(daemon as i32, "api").is_none()
    });
    // And back: the change returns once the template serves.
    let reply = d.http("PATCH", "/v1/functions/api", br#"{"warm": true}"#);
    assert!(matches!(reply.status, 200 | 201), "{}", reply.text());
    assert_eq!(kind("3"), "warm");

    // Rollback to the cold version runs cold; back to a warm one is warm
    // again once its template is up (the first may run cold meanwhile).
    let reply = d.http("POST", "/v1/functions/api/rollback", br#"{"version": 2}"#);
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(kind("2"), "cold");
    let reply = d.http("POST", "/v1/functions/api/rollback", br#"{"version": 1}"#);
    assert_eq!(reply.status, 200, "{}", reply.text());
    let started = Instant::now();
    while kind("1") != "warm" {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "version 1 never warm"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // Removal with --force while requests run in copies.
    let bearer = format!("Bearer {}", d.token.as_deref().unwrap());
    let replies: Vec<Reply> = std::thread::scope(|s| {
        let running: Vec<_> = (0..3)
            .map(|_| {
                let (addr, bearer) = (&d.addr, &bearer);
                s.spawn(move || {
                    common::daemon::http(
                        addr,
                        "POST",
                        "/v1/functions/api/invoke",
                        &[("authorization", bearer)],
                        b"sleep",
                    )
                })
            })
            .collect();
        wait_until("three requests run", Duration::from_secs(10), || {
            d.cli_json(&["ps"])["invocations"]
                .as_array()
                .is_some_and(|a| a.iter().filter(|i| i["status"] == "running").count() == 3)
        });
        let (status, _, err) = d.cli(&["rm", "api"]);
        assert_ne!(status, 0);
        assert!(err.contains("in flight"), "{err}");
        let started = Instant::now();
        let (status, _, err) = d.cli(&["rm", "api", "--force"]);
        assert_eq!(status, 0, "{err}");
        assert!(started.elapsed() < Duration::from_secs(10));
        running.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for reply in &replies {
        assert_eq!(start(reply), "warm", "{:?}", reply.headers);
        assert_eq!(status(reply), "cancelled", "{}", reply.text());
        assert!(reply
            .text()
            .contains("cancelled by the removal of its function"));
    }
    assert!(!exists(d, "api"));
    wait_until("nothing of api is left", Duration::from_secs(5), || {
        function_processes("api").is_empty()
    });
}

/// FINDING: one template per function name: invoking an older warm version
/// (`?version=1`) replaces the latest version's template with one of that
/// version, and the next invocation of the latest replaces it back. Each
/// such request runs cold and each swap runs the initialisation again.
#[test]
#[ignore = "known limitation (README): one template per function; older versions run cold"]
fn invoking_an_older_version_leaves_the_latest_warm() {
    let Some(t) = setup("invoking_an_older_version_leaves_the_latest_warm", &[]) else {
        return;
    };
    let d = &t.daemon;
    let code = py(
        t.dir.path(),
        "v",
        "import os\ndef handle(body):\n    return os.environ['ALCOVE_VERSION']\n",
    );
    deploy_warm(d, "v", &code, &[]);
    deploy_warm(d, "v", &code, &["--env", "X=2"]);
    let template = template_pid(d.child.id() as i32, "v");
    for _ in 0..3 {
        let _ = d.http("POST", "/v1/functions/v/invoke?version=1", b"");
        std::thread::sleep(Duration::from_millis(500));
        let latest = invoke(d, "v", b"");
        assert_eq!(latest.text(), "2");
        assert_eq!(start(&latest), "warm", "the latest version ran cold");
    }
    assert_eq!(
        template_pid(d.child.id() as i32, "v"),
        template,
        "the template was swapped"
    );
}

/// FINDING: a rollback to a version that is not warm leaves the warm
/// template of the version before it running (and its memory counted in
/// --warm-memory) until the function is removed or deployed warm again.
#[test]
fn a_rollback_to_a_cold_version_stops_the_template() {
    let Some(t) = setup("a_rollback_to_a_cold_version_stops_the_template", &[]) else {
        return;
    };
    let d = &t.daemon;
    let code = py(t.dir.path(), "r", std::str::from_utf8(SERVES).unwrap());
    let (status, said) = deploy_py(d, "r", &code, &[]); // version 1, cold
    assert_eq!(status, 0, "{said}");
    deploy_warm(d, "r", &code, &[]); // version 2, warm
    assert!(template_pid(d.child.id() as i32, "r").is_some());
    let reply = d.http("POST", "/v1/functions/r/rollback", br#"{"version": 1}"#);
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(start(&invoke(d, "r", b"")), "cold");
    wait_until(
        "the warm template of version 2 stops",
        Duration::from_secs(5),
        || template_pid(d.child.id() as i32, "r").is_none(),
    );
}
