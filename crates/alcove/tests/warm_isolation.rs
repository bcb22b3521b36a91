//! Warm starts keep invocations apart as cold starts do: each request is
//! served by a fresh copy of an initialised template, and nothing one copy
//! does (files, globals, environment, processes, sockets, random state) is
//! seen by the next; the function's limits, secrets and environment reach
//! every copy; and a copy that fails hurts neither the template nor the pool.
//! End to end against a real `alcove serve` and the Python runtime.

mod common;
use common::daemon::{http, setup, Daemon, Reply};
use common::warm::{invoke, py, start, template_pid};
use common::{alcove_cgroups, processes_with, wait_until};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Deploys `code` with the Python runtime and `extra` flags; must succeed.
fn deploy_py(d: &Daemon, name: &str, code: &Path, extra: &[&str]) {
    let code = code.to_str().unwrap();
    let mut args = vec![
        "deploy",
        name,
        "--code",
        code,
        "--runtime",
        "python",
        "--entry",
        "main.py",
    ];
    args.extend_from_slice(extra);
    let (status, out, err) = d.cli(&args);
    assert_eq!(status, 0, "deploy {name}: {err}{out}");
}

/// An invocation that must succeed from a warm copy; its body as JSON.
fn warm_json(d: &Daemon, name: &str, body: &[u8]) -> Value {
    let reply = invoke(d, name, body);
    assert_eq!(reply.status, 200, "{name}: {}", reply.text());
    assert_eq!(start(&reply), "warm", "{name}: {:?}", reply.headers);
    assert!(
        reply.header("server-timing").is_some(),
        "{name}: a warm reply carries server-timing: {:?}",
        reply.headers
    );
    serde_json::from_slice(&reply.body)
        .unwrap_or_else(|e| panic!("{name}: not JSON ({e}): {}", reply.text()))
}

/// Stops the daemon as an operator would (SIGTERM) and checks that it took
/// its templates' pieces with it: no copy cgroup (sb-PID-*) and no socket
/// directory (/run/alcove/warm/PID-*) of its own remain.
fn stop(d: &mut Daemon) {
    let pid = d.child.id() as i32;
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
    let sockets: Vec<String> = std::fs::read_dir("/run/alcove/warm")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(&own))
        .collect();
    assert!(
        sockets.is_empty(),
        "left behind in /run/alcove/warm: {sockets:?}"
    );
}

#[test]
fn warm_and_cold_return_the_same_results() {
    let Some(mut t) = setup("warm_and_cold_return_the_same_results", &[]) else {
        return;
    };
    let d = &t.daemon;
    // Deterministic in everything but the start: a computation on the body
    // and what the handler is (its identity, place, privileges, code).
    let source = r#"
import hashlib, json, os, socket
def handle(body):
    status = {}
    for line in open("/proc/self/status"):
        key, _, value = line.partition(":")
        if key.startswith("Cap") or key in ("NoNewPrivs", "Seccomp", "Uid", "Gid", "Groups"):
            status[key] = value.strip()
    return json.dumps({
        "sha256": hashlib.sha256(body).hexdigest(),
        "sum": sum(i * i for i in range(len(body) * 1000)),
        "upper": body.decode().upper(),
        "cwd": os.getcwd(),
        "ids": [os.getuid(), os.getgid(), os.getgroups()],
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "status": status,
        "code": sorted(os.listdir("/fn")),
        "encoding": [__import__("sys").getfilesystemencoding(), __import__("locale").getpreferredencoding(False)],
    }, sort_keys=True)
"#;
    let code = py(t.dir.path(), "same", source);
    deploy_py(d, "same-warm", &code, &["--warm"]);
    deploy_py(d, "same-cold", &code, &[]);
    for body in [&b"hello, warm and cold"[..], b"", b"\xc3\xa9t\xc3\xa9"] {
        let warm = invoke(d, "same-warm", body);
        let cold = invoke(d, "same-cold", body);
        assert_eq!(warm.status, 200, "{}", warm.text());
        assert_eq!(cold.status, 200, "{}", cold.text());
        assert_eq!(start(&warm), "warm", "{:?}", warm.headers);
        assert_eq!(start(&cold), "cold", "{:?}", cold.headers);
        assert!(warm.header("server-timing").is_some(), "{:?}", warm.headers);
        assert_eq!(
            warm.text(),
            cold.text(),
            "warm and cold answered differently for {body:?}"
        );
        let answer: Value = serde_json::from_slice(&warm.body).unwrap();
        assert_eq!(
            answer["sha256"].as_str().unwrap().len(),
            64,
            "the handler really ran: {answer}"
        );
    }
    stop(&mut t.daemon);
}

/// A difference warm and cold should not have: the environment a handler
/// (and whatever it runs) sees. The cold runtime's Python coerces the C
/// locale (PEP 538) and so puts LC_CTYPE into its own environment; a copy's
/// environment is replaced by the invocation's, which has none.
#[test]
fn warm_and_cold_handlers_see_the_same_environment_names() {
    let Some(mut t) = setup("warm_and_cold_handlers_see_the_same_environment_names", &[]) else {
        return;
    };
    let d = &t.daemon;
    let source = r#"
import json, os, subprocess
def handle(body):
    child = subprocess.run(["env"], capture_output=True, text=True).stdout
    return json.dumps({
        "handler": sorted(os.environ),
        "child": sorted(line.split("=", 1)[0] for line in child.splitlines()),
    })
"#;
    let code = py(t.dir.path(), "env", source);
    deploy_py(d, "env-warm", &code, &["--warm"]);
    deploy_py(d, "env-cold", &code, &[]);
    let warm = warm_json(d, "env-warm", b"");
    let cold = invoke(d, "env-cold", b"");
    assert_eq!(start(&cold), "cold");
    let cold: Value = serde_json::from_slice(&cold.body).unwrap();
    assert!(
        cold["handler"]
            .as_array()
            .unwrap()
            .iter()
            .any(|k| k == "ALCOVE_FUNCTION"),
        "the cold handler's environment was read: {cold}"
    );
    assert_eq!(
        warm["handler"], cold["handler"],
        "the handler's environment variables differ (warm, then cold)"
    );
    assert_eq!(
        warm["child"], cold["child"],
        "a child process's environment variables differ (warm, then cold)"
    );
    stop(&mut t.daemon);
}

#[test]
fn a_copys_writes_are_invisible_to_the_next_invocation() {
    let Some(mut t) = setup("a_copys_writes_are_invisible_to_the_next_invocation", &[]) else {
        return;
    };
    let d = &t.daemon;
    // Each invocation first says what it finds, then leaves everything it
    // can behind: files in /tmp and /dev/shm, a global, an environment
    // variable and a running child.
    let marker = "sleep 31.7193";
    let source = r#"
import json, os, subprocess
count = 0
def handle(body):
    global count
    count += 1
    pids = [p for p in os.listdir("/proc") if p.isdigit()]
    sleeping = []
    for p in pids:
        try:
            if open(f"/proc/{p}/cmdline", "rb").read().startswith(b"sleep"):
                sleeping.append(int(p))
        except OSError:
            pass
    found = {
        "count": count,
        "tmp": os.path.exists("/tmp/left-behind"),
        "shm": os.path.exists("/dev/shm/left-behind"),
        "env": os.environ.get("LEFT_BEHIND"),
        "pids": sorted(int(p) for p in pids),
        "sleeping": sleeping,
    }
    with open("/tmp/left-behind", "w") as f:
        f.write("x")
    with open("/dev/shm/left-behind", "w") as f:
        f.write("x")
    os.environ["LEFT_BEHIND"] = "yes"
    child = subprocess.Popen(["sleep", "31.7193"])
    found["left"] = {
        "tmp": os.path.exists("/tmp/left-behind"),
        "shm": os.path.exists("/dev/shm/left-behind"),
        "env": os.environ.get("LEFT_BEHIND"),
        "child_running": child.poll() is None,
    }
    return json.dumps(found)
"#;
    let code = py(t.dir.path(), "leave", source);
    deploy_py(d, "leave", &code, &["--warm"]);
    for i in 0..4 {
        let seen = warm_json(d, "leave", b"");
        // The situation arose: this invocation really left its mess.
        assert_eq!(
            seen["left"],
            serde_json::json!({"tmp": true, "shm": true, "env": "yes", "child_running": true}),
            "invocation {i} could not leave things behind: {seen}"
        );
        // ... and found none of the previous one's.
        assert_eq!(seen["count"], 1, "invocation {i} saw a global: {seen}");
        assert_eq!(seen["tmp"], false, "invocation {i} saw /tmp: {seen}");
        assert_eq!(seen["shm"], false, "invocation {i} saw /dev/shm: {seen}");
        assert_eq!(seen["env"], Value::Null, "invocation {i}: {seen}");
        assert_eq!(
            seen["pids"],
            serde_json::json!([1]),
            "invocation {i}: {seen}"
        );
        assert_eq!(
            seen["sleeping"],
            serde_json::json!([]),
            "invocation {i}: {seen}"
        );
        // The child it left running is gone from the host, not only from
        // the next copy's view.
        wait_until(
            "the copy's leftover child is gone from the host",
            Duration::from_secs(2),
            || processes_with(marker).is_empty(),
        );
    }
    stop(&mut t.daemon);
}

#[test]
fn copies_see_only_their_own_processes_and_network() {
    let Some(mut t) = setup("copies_see_only_their_own_processes_and_network", &[]) else {
        return;
    };
    let d = &t.daemon;
    // Each copy binds the same port and one of its own (the body), holds
    // both for a second, and says what it sees meanwhile: its /proc (with a
    // child of its own running) and its /proc/net/tcp.
    let source = r#"
import json, os, socket, subprocess, time
def listen(port):
    s = socket.socket()
    s.bind(("127.0.0.1", port))
    s.listen()
    return s
def handle(body):
    own = int(body)
    shared = listen(47123)
    mine = listen(own)
    bound = time.time()
    child = subprocess.Popen(["sleep", "5"])
    time.sleep(1)
    pids = sorted(int(p) for p in os.listdir("/proc") if p.isdigit())
    ports = []
    for line in open("/proc/net/tcp").readlines()[1:]:
        local = line.split()[1]
        ports.append(int(local.split(":")[1], 16))
    init = open("/proc/1/cmdline", "rb").read().split(b"\0")[1].decode()
    child.kill()
    child.wait()
    released = time.time()
    return json.dumps({"pids": pids, "child": child.pid, "ports": sorted(ports),
                       "bound": bound, "released": released, "init": init})
"#;
    let code = py(t.dir.path(), "net", source);
    deploy_py(d, "net", &code, &["--warm"]);
    let bearer = format!("Bearer {}", d.token.as_deref().unwrap());
    let addr = d.addr.clone();
    let ports = [47201u16, 47202];
    let replies: Vec<Reply> = std::thread::scope(|s| {
        let handles: Vec<_> = ports
            .iter()
            .map(|port| {
                let (addr, bearer) = (&addr, &bearer);
                s.spawn(move || {
                    http(
                        addr,
                        "POST",
                        "/v1/functions/net/invoke",
                        &[("authorization", bearer)],
                        port.to_string().as_bytes(),
                    )
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let seen: Vec<Value> = replies
        .iter()
        .map(|r| {
            assert_eq!(r.status, 200, "{}", r.text());
            assert_eq!(start(r), "warm", "{:?}", r.headers);
            serde_json::from_slice(&r.body).unwrap()
        })
        .collect();
    // The situation arose: both held port 47123 at the same time.
    let latest_bind = seen[0]["bound"]
        .as_f64()
        .unwrap()
        .max(seen[1]["bound"].as_f64().unwrap());
    let first_release = seen[0]["released"]
        .as_f64()
        .unwrap()
        .min(seen[1]["released"].as_f64().unwrap());
    assert!(
        latest_bind < first_release,
        "the two copies did not run at once: {seen:?}"
    );
    for (i, s) in seen.iter().enumerate() {
        let (own, other) = (ports[i], ports[1 - i]);
        assert_eq!(
            s["pids"],
            serde_json::json!([1, s["child"]]),
            "copy {i} sees other processes: {s}"
        );
        assert_eq!(s["init"], "/run/alcove/runtime/alcove_runtime.py", "{s}");
        assert_eq!(
            s["ports"],
            serde_json::json!([47123, own]),
            "copy {i}'s /proc/net/tcp is not just its own (the other's port is {other}): {s}"
        );
    }
    stop(&mut t.daemon);
}

#[test]
fn copies_draw_different_random_numbers() {
    let Some(mut t) = setup("copies_draw_different_random_numbers", &[]) else {
        return;
    };
    let d = &t.daemon;
    // The template draws at init, and works out what a copy would draw
    // next if it were not re-seeded.
    let source = r#"
import json, random, uuid
AT_INIT = random.random()
UUID_AT_INIT = str(uuid.uuid4())
_twin = random.Random()
_twin.setstate(random.getstate())
UNRESEEDED = _twin.random()
def handle(body):
    return json.dumps({"random": random.random(), "uuid": str(uuid.uuid4()),
                       "at_init": AT_INIT, "uuid_at_init": UUID_AT_INIT,
                       "unreseeded": UNRESEEDED})
"#;
    let code = py(t.dir.path(), "rand", source);
    deploy_py(d, "rand", &code, &["--warm"]);
    let seen: Vec<Value> = (0..4).map(|_| warm_json(d, "rand", b"")).collect();
    // All came from one template: the values it drew at init are shared.
    for s in &seen {
        assert_eq!(s["at_init"], seen[0]["at_init"], "{seen:?}");
        assert_eq!(s["uuid_at_init"], seen[0]["uuid_at_init"], "{seen:?}");
    }
    let mut randoms: Vec<String> = seen.iter().map(|s| s["random"].to_string()).collect();
    let mut uuids: Vec<String> = seen.iter().map(|s| s["uuid"].to_string()).collect();
    for s in &seen {
        for (value, init) in [
            (&s["random"], &s["at_init"]),
            (&s["random"], &s["unreseeded"]),
            (&s["uuid"], &s["uuid_at_init"]),
        ] {
            assert_ne!(
                value, init,
                "a copy repeated the template's sequence: {seen:?}"
            );
        }
    }
    randoms.sort();
    randoms.dedup();
    uuids.sort();
    uuids.dedup();
    assert_eq!(
        randoms.len(),
        seen.len(),
        "random.random() repeated: {seen:?}"
    );
    assert_eq!(uuids.len(), seen.len(), "uuid.uuid4() repeated: {seen:?}");
    stop(&mut t.daemon);
}

#[test]
fn limits_apply_to_copies_and_the_template_survives_them() {
    let Some(mut t) = setup("limits_apply_to_copies_and_the_template_survives_them", &[]) else {
        return;
    };
    let d = &t.daemon;
    let daemon_pid = d.child.id();
    let source = r#"
import json, os, time
def handle(body):
    if body == b"hog":
        held = []
        for _ in range(64):
            block = bytearray(8 << 20)
            for i in range(0, len(block), 4096):
                block[i] = 1
            held.append(block)
        return "the hog got 512M"
    if body == b"sleep":
        time.sleep(10)
        return "slept"
    return json.dumps({"pid": os.getpid()})
"#;
    let code = py(t.dir.path(), "limits", source);
    deploy_py(d, "hog", &code, &["--warm", "--memory", "64M"]);
    deploy_py(d, "sleeper", &code, &["--warm", "--timeout", "1s"]);
    for (name, body, status, error) in [
        ("hog", &b"hog"[..], "oom", "function_out_of_memory"),
        ("sleeper", b"sleep", "timeout", "function_timeout"),
    ] {
        let template = template_pid(daemon_pid as i32, name).expect("a running template");
        for round in 0..2 {
            let reply = invoke(d, name, body);
            assert_eq!(start(&reply), "warm", "{name}: {:?}", reply.headers);
            assert_eq!(
                reply.header("x-alcove-status"),
                Some(status),
                "{name} round {round}: {}",
                reply.text()
            );
            assert_eq!(reply.code(), error, "{name}: {}", reply.text());
            // The template survived: the next request is a warm copy of it.
            let ok = warm_json(d, name, b"ok");
            assert_eq!(ok["pid"], 1, "{ok}");
            assert_eq!(
                template_pid(daemon_pid as i32, name),
                Some(template),
                "{name}'s template was replaced"
            );
        }
    }
    stop(&mut t.daemon);
}

#[test]
fn a_crashing_copy_hurts_neither_template_nor_pool() {
    let Some(mut t) = setup("a_crashing_copy_hurts_neither_template_nor_pool", &[]) else {
        return;
    };
    let d = &t.daemon;
    let daemon_pid = d.child.id();
    let source = r#"
import ctypes, os
def handle(body):
    if body == b"abort":
        os.abort()
    if body == b"segfault":
        ctypes.string_at(0)
    return "fine"
"#;
    let code = py(t.dir.path(), "crash", source);
    deploy_py(d, "crash", &code, &["--warm"]);
    let template = template_pid(daemon_pid as i32, "crash").expect("a running template");
    // More crashes in a row than the copies refused that make alcove give a
    // template up (5): a crash in a handler is no fault of the template's.
    for round in 0..4 {
        for how in ["abort", "segfault"] {
            let reply = invoke(d, "crash", how.as_bytes());
            assert_eq!(start(&reply), "warm", "{how}: {:?}", reply.headers);
            assert_eq!(
                reply.header("x-alcove-status"),
                Some("signaled"),
                "round {round}, {how}: {}",
                reply.text()
            );
        }
    }
    for _ in 0..3 {
        let reply = invoke(d, "crash", b"");
        assert_eq!(reply.status, 200, "{}", reply.text());
        assert_eq!(start(&reply), "warm", "{:?}", reply.headers);
        assert_eq!(reply.text(), "fine");
    }
    assert_eq!(
        template_pid(daemon_pid as i32, "crash"),
        Some(template),
        "the template was replaced"
    );
    stop(&mut t.daemon);
}

/// A crash reads the same warm as cold: the signal the handler died of,
/// not another one (a copy is not alcove's child, so alcove cannot wait for
/// it; what it reports must still be what happened).
#[test]
fn a_crashing_copy_is_reported_with_the_signal_it_died_of() {
    let Some(mut t) = setup(
        "a_crashing_copy_is_reported_with_the_signal_it_died_of",
        &[],
    ) else {
        return;
    };
    let d = &t.daemon;
    let code = py(
        t.dir.path(),
        "segv",
        "import ctypes\ndef handle(body):\n    ctypes.string_at(0)\n",
    );
    deploy_py(d, "segv-warm", &code, &["--warm"]);
    deploy_py(d, "segv-cold", &code, &[]);
    let signal = |name: &str, kind: &str| {
        let reply = invoke(d, name, b"");
        assert_eq!(start(&reply), kind, "{:?}", reply.headers);
        assert_eq!(
            reply.header("x-alcove-status"),
            Some("signaled"),
            "{}",
            reply.text()
        );
        reply.json()["error"]["invocation"]["signal"].clone()
    };
    let cold = signal("segv-cold", "cold");
    assert_eq!(cold, libc::SIGSEGV, "a cold segfault is SIGSEGV");
    let warm = signal("segv-warm", "warm");
    if warm.is_null() && !common::kernel_keeps_exit_on_pidfds() {
        // The copy is not alcove's child: only PIDFD_GET_INFO (Linux 6.15+)
        // tells it how the copy died. Before that, "a signal" without a name,
        // never a made-up one.
        eprintln!(
            "NOTE a_crashing_copy_is_reported_with_the_signal_it_died_of: this kernel ({}) \
             predates PIDFD_GET_INFO; the warm segfault is reported as an unnamed signal",
            std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .unwrap_or_default()
                .trim()
        );
    } else {
        assert_eq!(warm, cold, "a warm segfault is reported as another signal");
    }
    stop(&mut t.daemon);
}

#[test]
fn secrets_and_environment_reach_copies() {
    let Some(mut t) = setup("secrets_and_environment_reach_copies", &[]) else {
        return;
    };
    let d = &t.daemon;
    let source = r#"
import json, os
AT_INIT = os.environ.get("GREETING")
def handle(body):
    return json.dumps({
        "greeting": os.environ.get("GREETING"),
        "region": os.environ.get("REGION"),
        "secret": open("/run/secrets/api_key").read(),
        "at_init": AT_INIT,
        "pid": os.getpid(),
    })
"#;
    let code = py(t.dir.path(), "env", source);
    deploy_py(
        d,
        "env",
        &code,
        &[
            "--warm",
            "--env",
            "GREETING=hola",
            "--env",
            "REGION=eu-1",
            "--secret",
            "api_key=s3cr3t-value",
        ],
    );
    for _ in 0..2 {
        let seen = warm_json(d, "env", b"");
        assert_eq!(
            seen,
            serde_json::json!({
                "greeting": "hola",
                "region": "eu-1",
                "secret": "s3cr3t-value",
                "at_init": "hola",
                "pid": 1,
            })
        );
    }
    stop(&mut t.daemon);
}
