//! Functions deployed with `--isolation gvisor`: they answer through HTTP
//! from gVisor's kernel, from a pool of sandboxes booted ahead (refilled
//! after each use) or cold, and nothing is left after many invocations, a
//! shutdown, or a kill -9 of the daemon followed by a restart; a layered
//! image serves as their root (writable inside, unchanged outside), and a
//! bound host directory is served from what was checked.

mod common;
use common::daemon::Daemon;
use common::gvisor::*;
use common::*;
use serde_json::json;
use std::time::{Duration, Instant};

/// The handler: which kernel answers, which invocation it is, its input.
const HANDLER: &str =
    "sh -c 'printf \"%s|%s|\" \"$(uname -r)\" \"$ALCOVE_INVOCATION\"; cat; echo \"|$PATH_INFO\"'";

fn counter(d: &Daemon, kind: &str) -> f64 {
    let text = String::from_utf8_lossy(&d.http("GET", "/metrics", b"").body).into_owned();
    let name = format!("alcove_sandbox_starts_total{{kind=\"{kind}\"}}");
    text.lines()
        .find_map(|l| l.strip_prefix(name.as_str()))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

/// How many booted sandboxes `function`'s pool holds now.
fn pool_ready(d: &Daemon, function: &str) -> f64 {
    let text = String::from_utf8_lossy(&d.http("GET", "/metrics", b"").body).into_owned();
    let name = format!("alcove_gvisor_pool_ready{{function=\"{function}\"}}");
    text.lines()
        .find_map(|l| l.strip_prefix(name.as_str()))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Waits until `check` holds, for up to `limit`.
fn wait_until(what: &str, limit: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !check() {
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Stops the daemon as an operator does (SIGTERM) and waits for it.
fn stop(mut d: Daemon) {
    // SAFETY: kill on the pid of a child this test started and has not reaped.
    unsafe { libc::kill(d.child.id() as i32, libc::SIGTERM) };
    let status = d.child.wait().unwrap();
    assert!(status.success(), "the daemon's shutdown failed: {status}");
}

/// Nothing of any pool is left: no runsc process, run directory or cgroup.
fn assert_nothing_left(before: &[i32]) {
    wait_until("the pool's processes go", Duration::from_secs(10), || {
        runsc_processes().iter().all(|p| before.contains(p))
    });
    assert!(leftovers().is_empty(), "left behind: {:?}", leftovers());
    // Only the container tier's empty slots (kept for reuse) may stay.
    let cgroups: Vec<_> = alcove_cgroups()
        .into_iter()
        .filter(|c| {
            !c.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("slot-")
        })
        .collect();
    assert!(cgroups.is_empty(), "{cgroups:?}");
}

#[test]
fn a_gvisor_function_answers_through_http_from_its_pool_and_leaves_nothing() {
    let test = "a_gvisor_function_answers_through_http_from_its_pool_and_leaves_nothing";
    if !runsc_or_skip(test) {
        return;
    }
    let _g = serial();
    let before = runsc_processes();
    let data = tempfile::tempdir().unwrap();
    let d = Daemon::start(data.path(), &[]);
    let (code, _, err) = d.cli(&[
        "deploy",
        "hello",
        "--isolation",
        "gvisor",
        "--pool",
        "1",
        "--memory",
        "128M",
        "--timeout",
        "20s",
        "--handler",
        HANDLER,
    ]);
    assert_eq!(code, 0, "{err}");
    // The deploy booted the pool's first sandbox: the first request is served from it.
    assert_eq!(
        leftovers().len(),
        1,
        "one pooled sandbox: {:?}",
        leftovers()
    );
    let host_release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    let mut answers = Vec::new();
    for i in 0..8 {
        let warm = counter(&d, "warm");
        if i > 0 {
            // The pool refills in the background; this waits for it (then
            // the request is pooled) except on odd rounds, which may not.
            if i % 2 == 0 {
                // Ready in the pool, and the used one's teardown (off the
                // response's path) done: one on disk, and that one pooled.
                wait_until("the pool refills", Duration::from_secs(20), || {
                    pool_ready(&d, "hello") == 1.0 && leftovers().len() == 1
                });
            }
        }
        let reply = d.http("POST", "/fn/hello/some/path", format!("ping{i}").as_bytes());
        assert_eq!(
            reply.status,
            200,
            "{}",
            String::from_utf8_lossy(&reply.body)
        );
        let body = String::from_utf8_lossy(&reply.body).into_owned();
        let parts: Vec<&str> = body.trim_end().split('|').collect();
        assert_eq!(parts.len(), 4, "{body}");
        // gVisor's kernel answered (it says 4.4.0), not this host's.
        assert_eq!(parts[0], "4.4.0", "{body}");
        assert_ne!(parts[0], host_release.trim());
        assert_eq!(parts[2], format!("ping{i}"), "its own input: {body}");
        assert_eq!(
            parts[3], "/some/path",
            "the request's own environment: {body}"
        );
        answers.push(parts[1].to_owned());
        if i % 2 == 0 {
            assert_eq!(counter(&d, "warm"), warm + 1.0, "round {i} was not pooled");
        }
    }
    answers.sort();
    answers.dedup();
    assert_eq!(
        answers.len(),
        8,
        "each request its own invocation: {answers:?}"
    );
    // The record says how it ended, as for the container tier.
    let listed = d.cli_json(&["logs", "hello"]);
    let text = listed.to_string();
    assert!(text.contains("\"status\":\"exited\""), "{text}");

    // An `http` handler's CGI response streams out of gVisor as it does
    // out of the container tier.
    let (code, _, err) = d.cli(&[
        "deploy",
        "web",
        "--isolation",
        "gvisor",
        "--http",
        "--handler",
        "printf 'Status: 201 Created\r\nX-Tier: gvisor\r\n\r\nmade'",
    ]);
    assert_eq!(code, 0, "{err}");
    let reply = d.http("GET", "/fn/web", b"");
    assert_eq!(
        reply.status,
        201,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    assert!(
        reply
            .headers
            .iter()
            .any(|(k, v)| k.eq_ignore_ascii_case("x-tier") && v == "gvisor"),
        "{:?}",
        reply.headers
    );
    // (Chunked: the body streams.)
    let body = String::from_utf8_lossy(&reply.body);
    assert!(body.contains("made"), "{body}");

    // A timeout is reported as such.
    let (code, _, err) = d.cli(&[
        "deploy",
        "slow",
        "--isolation",
        "gvisor",
        "--timeout",
        "1s",
        "--handler",
        "sleep 30",
    ]);
    assert_eq!(code, 0, "{err}");
    let started = Instant::now();
    let reply = d.http("POST", "/v1/functions/slow/invoke", b"");
    assert!(started.elapsed() < Duration::from_secs(15));
    assert_eq!(
        (reply.status, reply.code()),
        (504, "function_timeout".to_owned())
    );

    // A CPU-time limit stops a spinner (its timeout is far away), from its
    // pool: the pooled sandbox's boot is not counted against it.
    let (code, _, err) = d.cli(&[
        "deploy",
        "spin",
        "--isolation",
        "gvisor",
        "--cpu-time",
        "1s",
        "--timeout",
        "120s",
        "--handler",
        "sh -c 'while :; do :; done'",
    ]);
    assert_eq!(code, 0, "{err}");
    let reply = d.http("POST", "/v1/functions/spin/invoke", b"");
    assert_eq!(
        (reply.status, reply.code()),
        (502, "function_cpu_time".to_owned()),
        "{}",
        reply.text()
    );

    // Idle: the pools hold exactly their booted sandboxes (one each).
    wait_until("the pools refill", Duration::from_secs(30), || {
        leftovers().len() == 4
    });
    stop(d);
    assert_nothing_left(&before);
}

#[test]
fn what_gvisor_cannot_do_is_refused_at_deploy_and_kill_9_leaves_nothing_after_a_restart() {
    let test =
        "what_gvisor_cannot_do_is_refused_at_deploy_and_kill_9_leaves_nothing_after_a_restart";
    if !runsc_or_skip(test) {
        return;
    }
    let _g = serial();
    let before = runsc_processes();
    let data = tempfile::tempdir().unwrap();
    let mut d = Daemon::start(data.path(), &[]);
    for (flags, said) in [
        (&["--warm"][..], "warm"),
        (&["--accel", "cpu"][..], "accel"),
        (&["--deny-net"][..], "guard"),
        (&["--pool", "99"][..], "pool 99"),
    ] {
        let mut args = vec![
            "deploy",
            "bad",
            "--isolation",
            "gvisor",
            "--handler",
            "true",
        ];
        args.extend_from_slice(flags);
        let (code, _, err) = d.cli(&args);
        assert_ne!(code, 0, "{flags:?} was not refused");
        assert!(err.contains(said), "{flags:?}: {err}");
    }
    let (code, _, err) = d.cli(&["deploy", "bad", "--pool", "2", "--handler", "true"]);
    assert_ne!(code, 0);
    assert!(err.contains("--isolation gvisor"), "{err}");
    let (code, _, err) = d.cli(&["deploy", "bad", "--handler", "true"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        leftovers().is_empty(),
        "refused deploys left {:?}",
        leftovers()
    );

    let (code, _, err) = d.cli(&[
        "deploy",
        "kept",
        "--isolation",
        "gvisor",
        "--pool",
        "2",
        "--handler",
        "cat",
    ]);
    assert_eq!(code, 0, "{err}");
    wait_until("the pool fills", Duration::from_secs(30), || {
        leftovers().len() == 2
    });
    // A kill -9 leaves the pool's sandboxes running: nothing could stop them.
    d.kill9();
    let orphans = leftovers();
    let orphan_processes: Vec<i32> = runsc_processes()
        .into_iter()
        .filter(|p| !before.contains(p))
        .collect();
    assert_eq!(orphans.len(), 2);
    assert!(
        !orphan_processes.is_empty(),
        "no pooled sandbox outlived the kill"
    );
    // The next daemon reclaims them and boots the pool again.
    let d = Daemon::start(data.path(), &[]);
    wait_until("the new pool fills", Duration::from_secs(30), || {
        let now = leftovers();
        now.len() == 2 && now.iter().all(|n| !orphans.contains(n))
    });
    let alive = runsc_processes();
    assert!(
        orphan_processes.iter().all(|p| !alive.contains(p)),
        "the old pool's processes still run"
    );
    let reply = d.http("POST", "/v1/functions/kept/invoke", b"again");
    assert_eq!((reply.status, &reply.body[..]), (200, &b"again"[..]));
    // Rolled back to a container version, the pool goes.
    let (code, _, err) = d.cli(&["deploy", "kept", "--isolation", "container"]);
    assert_eq!(code, 0, "{err}");
    wait_until("the pool goes", Duration::from_secs(10), || {
        leftovers().is_empty()
    });
    stop(d);
    assert_nothing_left(&before);
}

/// The overlays of multi-layer images the gVisor tier mounts (under its
/// run directories): none may outlive its sandbox.
fn layer_mounts() -> Vec<String> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| l.contains(STATE_ROOT))
        .map(str::to_owned)
        .collect()
}

#[test]
fn a_gvisor_function_runs_in_a_layered_image_that_it_cannot_change() {
    // (It writes to its root: the writes stay in its sandbox.)
    let test = "a_gvisor_function_runs_in_a_layered_image_that_it_cannot_change";
    if !runsc_or_skip(test) {
        return;
    }
    let _g = serial();
    let before = runsc_processes();
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    import_busybox_image(
        dir.path(),
        &store,
        "gvimg:1",
        json!({ "Cmd": ["/bin/sh", "-c",
            "echo \"$(cat /etc/greeting) on $(uname -r)\"; echo changed > /etc/greeting; cat /etc/greeting"],
            "Env": ["PATH=/bin"] }),
    );
    let d = Daemon::start(
        &dir.path().join("data"),
        &["--image-store", store.to_str().unwrap()],
    );
    let (code, _, err) = d.cli(&[
        "deploy",
        "img",
        "--image",
        "gvimg:1",
        "--isolation",
        "gvisor",
        "--user",
        "0:0",
    ]);
    assert_eq!(code, 0, "{err}");
    // The pooled sandbox holds the layers' overlay while it waits.
    assert_eq!(layer_mounts().len(), 1, "{:?}", layer_mounts());
    for _ in 0..2 {
        let (code, out, err) = d.cli(&["invoke", "img"]);
        assert_eq!(code, 0, "{err}");
        // Writable inside (as in the container tier), and each request
        // starts from the image as imported.
        assert_eq!(out, "from the image on 4.4.0\nchanged\n", "{err}");
    }
    // The layer on the host is as imported.
    let greeting = walkdir(&store)
        .into_iter()
        .find(|p| p.ends_with("etc/greeting"))
        .expect("the layer's file in the store");
    assert_eq!(std::fs::read(&greeting).unwrap(), b"from the image");
    stop(d);
    assert!(layer_mounts().is_empty(), "{:?}", layer_mounts());
    assert_nothing_left(&before);
}

/// Every path under `dir`.
fn walkdir(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                todo.push(p.clone());
            }
            found.push(p);
        }
    }
    found
}

#[test]
fn a_gvisor_function_sees_its_binds_pooled_and_leaves_no_mount() {
    let test = "a_gvisor_function_sees_its_binds_pooled_and_leaves_no_mount";
    if !runsc_or_skip(test) {
        return;
    }
    let _g = serial();
    let before = runsc_processes();
    let dir = tempfile::tempdir().unwrap();
    let allowed = dir.path().join("allowed");
    std::fs::create_dir_all(allowed.join("ro")).unwrap();
    std::fs::create_dir_all(allowed.join("rw")).unwrap();
    std::fs::write(allowed.join("ro/file"), "bound data").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(allowed.join("rw"), std::fs::Permissions::from_mode(0o777)).unwrap();
    let allow = format!("{}:rw", allowed.display());
    let d = Daemon::start(&dir.path().join("data"), &["--allow-bind", &allow]);
    let ro = format!("{}:/data", allowed.join("ro").display());
    let rw = format!("{}:/out:rw", allowed.join("rw").display());
    let (code, _, err) = d.cli(&[
        "deploy",
        "binds",
        "--isolation",
        "gvisor",
        "--bind",
        &ro,
        "--bind",
        &rw,
        "--handler",
        "sh -c 'cat /data/file; echo written > /out/$ALCOVE_INVOCATION; echo x > /data/file || echo ro-refused'",
    ]);
    assert_eq!(code, 0, "{err}");
    // The pooled sandbox holds its pinned binds while it waits, and only there.
    assert!(!layer_mounts().is_empty(), "no pin mounted");
    let warm = counter(&d, "warm");
    let reply = d.http("POST", "/v1/functions/binds/invoke", b"");
    assert_eq!(
        reply.status,
        200,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    let body = String::from_utf8_lossy(&reply.body).into_owned();
    assert!(body.starts_with("bound data"), "{body}");
    assert!(
        body.contains("ro-refused"),
        "a read-only bind was written: {body}"
    );
    assert_eq!(counter(&d, "warm"), warm + 1.0, "not served from the pool");
    // The writable bind reached the host directory.
    let written: Vec<_> = std::fs::read_dir(allowed.join("rw"))
        .unwrap()
        .flatten()
        .collect();
    assert_eq!(written.len(), 1, "{written:?}");
    assert_eq!(
        std::fs::read_to_string(written[0].path()).unwrap(),
        "written\n"
    );
    assert_eq!(
        std::fs::read_to_string(allowed.join("ro/file")).unwrap(),
        "bound data"
    );
    stop(d);
    assert!(layer_mounts().is_empty(), "{:?}", layer_mounts());
    // The bound directories are intact after their run directories went.
    assert_eq!(
        std::fs::read_to_string(allowed.join("ro/file")).unwrap(),
        "bound data"
    );
    assert_eq!(std::fs::read_dir(allowed.join("rw")).unwrap().count(), 1);
    assert_nothing_left(&before);
}
