//! Hostile configuration: binds whose host path changes under the daemon,
//! identities that would own host files through a bind, and secrets that
//! must never come back. A real daemon, driven through `alcove fn` and HTTP.

mod common;
use common::daemon::{ok, refused, setup, Daemon};
use serde_json::{json, Value};
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Swaps `a` and `b` atomically (renameat2 RENAME_EXCHANGE).
fn exchange(a: &Path, b: &Path) {
    let a = CString::new(a.as_os_str().as_bytes()).unwrap();
    let b = CString::new(b.as_os_str().as_bytes()).unwrap();
    // SAFETY: two NUL-terminated paths relative to the working directory.
    let r = unsafe {
        libc::syscall(
            libc::SYS_renameat2,
            libc::AT_FDCWD,
            a.as_ptr(),
            libc::AT_FDCWD,
            b.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    assert_eq!(r, 0, "renameat2: {}", std::io::Error::last_os_error());
}

/// Whoever can write in the allowed directory (another function's rw bind,
/// a user of the host) swaps the bound directory for a link out of it, over
/// and over: the path checked must be the path mounted, so no invocation
/// ever sees the file outside.
#[test]
fn a_bind_swapped_for_a_link_between_check_and_mount_never_leads_out() {
    let Some(t) = setup(
        "a_bind_swapped_for_a_link_between_check_and_mount_never_leads_out",
        &[],
    ) else {
        return;
    };
    let shared = t.dir.path().join("shared");
    std::fs::create_dir_all(shared.join("data")).unwrap();
    std::fs::write(shared.join("data/file"), "bound content\n").unwrap();
    let outside = t.dir.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("file"), "secret host file\n").unwrap();
    std::os::unix::fs::symlink(&outside, shared.join("swap")).unwrap();
    let d = Daemon::start(
        &t.dir.path().join("data2"),
        &["--allow-bind", shared.to_str().unwrap()],
    );
    let bind = format!("{}:/data", shared.join("data").display());
    ok(
        &d,
        &[
            "deploy",
            "b",
            "--bind",
            &bind,
            "--handler",
            "cat /data/file",
        ],
    );

    let stop = Arc::new(AtomicBool::new(false));
    let flipper = {
        let stop = Arc::clone(&stop);
        let (data, swap) = (shared.join("data"), shared.join("swap"));
        std::thread::spawn(move || {
            let mut flips = 0u64;
            while !stop.load(Ordering::Relaxed) {
                exchange(&data, &swap);
                flips += 1;
            }
            if flips % 2 == 1 {
                exchange(&data, &swap);
            }
            flips
        })
    };
    let (mut bound, mut refused_count) = (0, 0);
    let started = std::time::Instant::now();
    while started.elapsed() < std::time::Duration::from_secs(20) && bound < 40 {
        let reply = d.http("POST", "/v1/functions/b/invoke", b"");
        let text = reply.text();
        assert!(
            !text.contains("secret host file"),
            "an invocation read the file outside the allowed directory: {text}"
        );
        if text.contains("bound content") {
            bound += 1;
        } else {
            refused_count += 1;
        }
    }
    stop.store(true, Ordering::Relaxed);
    let flips = flipper.join().unwrap();
    assert!(flips > 100, "the directory was swapped only {flips} times");
    // The race was run: some invocations saw the directory, some the link.
    assert!(bound > 0 && refused_count > 0, "{bound} {refused_count}");
}

/// alcove has no user namespace: uid or gid 0 inside a function is root's
/// on the host, owner of the root-only files under a bound directory (and
/// of any setuid file it writes through an rw bind). A function with binds
/// cannot run as root; without binds it still may.
#[test]
fn a_function_with_binds_cannot_run_as_root() {
    let Some(t) = setup("a_function_with_binds_cannot_run_as_root", &[]) else {
        return;
    };
    let shared = t.dir.path().join("shared");
    std::fs::create_dir_all(shared.join("data")).unwrap();
    let private = shared.join("data/private");
    std::fs::write(&private, "root only\n").unwrap();
    std::fs::set_permissions(
        &private,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let d = Daemon::start(
        &t.dir.path().join("data2"),
        &["--allow-bind", &format!("{}:rw", shared.display())],
    );
    let bind = format!("{}:/data:rw", shared.join("data").display());
    let read = ["--handler", "cat /data/private"];
    for user in ["0", "0:0", "1000:0", "0:1000"] {
        let err = refused(
            &d,
            &[&["deploy", "r", "--bind", &bind, "--user", user][..], &read].concat(),
        );
        assert!(err.contains("root"), "{user}: {err}");
    }
    // As nobody (the default) the file stays closed.
    ok(&d, &[&["deploy", "r", "--bind", &bind][..], &read].concat());
    let reply = d.http("POST", "/v1/functions/r/invoke", b"");
    assert!(!reply.text().contains("root only"), "{}", reply.text());
    // Nor can `fn config` give it root afterwards.
    let err = refused(&d, &["config", "r", "--user", "0"]);
    assert!(err.contains("root"), "{err}");
    // Without binds, root inside sees only the read-only host view.
    ok(&d, &["deploy", "s", "--user", "0", "--handler", "id -u"]);
    assert_eq!(ok(&d, &["invoke", "s", "--data", ""]), "0\n");
}

/// An environment `execve` would refuse deployed, and then every
/// invocation failed with "Argument list too long"; each `PATCH` of one
/// variable also copied megabytes into a new version. Refused up front.
#[test]
fn an_environment_too_large_to_run_is_refused_at_deploy() {
    let Some(t) = setup("an_environment_too_large_to_run_is_refused_at_deploy", &[]) else {
        return;
    };
    let d = &t.daemon;
    let big = "x".repeat(300 << 10);
    let body = json!({"name": "e", "handler": ["sh", "-c", "echo hi"], "env": {"BIG": big}});
    let reply = d.http("POST", "/v1/functions", body.to_string().as_bytes());
    assert_eq!(
        reply.status,
        400,
        "{}",
        &reply.text()[..200.min(reply.text().len())]
    );
    assert!(reply.text().contains("128 KiB"), "{}", reply.text());
    assert!(!reply.text().contains(&big[..1000]), "the value came back");
    let many: serde_json::Map<String, Value> = (0..20_000)
        .map(|i| (format!("V{i}"), json!("y".repeat(100))))
        .collect();
    let body = json!({"name": "e", "handler": ["sh", "-c", "echo hi"], "env": many});
    let reply = d.http("POST", "/v1/functions", body.to_string().as_bytes());
    assert_eq!(reply.status, 400);
    // Up to the bound it deploys and runs; a PATCH over it is refused.
    let fits = "z".repeat(100 << 10);
    let body =
        json!({"name": "e", "handler": ["sh", "-c", "echo ${#FITS}"], "env": {"FITS": fits}});
    let reply = d.http("POST", "/v1/functions", body.to_string().as_bytes());
    assert_eq!(reply.status, 201, "{}", reply.text());
    assert_eq!(
        ok(d, &["invoke", "e", "--data", ""]),
        format!("{}\n", 100 << 10)
    );
    let patch = json!({"env": {"MORE": "z".repeat(40 << 10)}});
    let reply = d.http("PATCH", "/v1/functions/e", patch.to_string().as_bytes());
    assert_eq!(reply.status, 400, "{}", reply.text());
}

/// Every version keeps a copy of its secrets: 256 secrets of 1 MiB made each
/// one-line `fn config` cost 256 MiB of disk. Their total is bounded.
#[test]
fn a_functions_secrets_are_bounded_together() {
    let Some(t) = setup("a_functions_secrets_are_bounded_together", &[]) else {
        return;
    };
    let d = &t.daemon;
    ok(d, &["deploy", "s", "--handler", "true"]);
    let mib = vec![b'k'; 1 << 20];
    for i in 0..4 {
        let reply = d.http("PUT", &format!("/v1/functions/s/secrets/k{i}"), &mib);
        assert_eq!(reply.status, 201, "{}", reply.text());
    }
    let reply = d.http("PUT", "/v1/functions/s/secrets/k4", &mib);
    assert_eq!(reply.status, 400, "{}", reply.text());
    assert!(reply.text().contains("4 MiB"), "{}", reply.text());
    let names = d.http("GET", "/v1/functions/s/secrets", b"").json();
    assert_eq!(names["secrets"].as_array().unwrap().len(), 4, "{names}");
}

/// Version numbers start again after `fn rm`; a secrets directory the
/// removed function left (as a crash between its records and its files
/// would) must not give the new function the old values.
#[test]
fn a_new_function_never_gets_secrets_a_removed_one_left_behind() {
    let Some(t) = setup(
        "a_new_function_never_gets_secrets_a_removed_one_left_behind",
        &[],
    ) else {
        return;
    };
    let d = &t.daemon;
    let read = ["--handler", "cat /run/secrets/db"];
    ok(d, &[&["deploy", "f"][..], &read].concat());
    ok(d, &["secret", "set", "f", "db=old-tenant-value"]);
    assert_eq!(ok(d, &["invoke", "f", "--data", ""]), "old-tenant-value");
    let dir = t.dir.path().join("data/secrets/f/2");
    assert!(dir.is_dir(), "no secrets directory at {}", dir.display());
    let kept = t.dir.path().join("kept");
    let cp = |from: &Path, to: &Path| {
        let s = std::process::Command::new("cp")
            .args(["-a", from.to_str().unwrap(), to.to_str().unwrap()])
            .status()
            .unwrap();
        assert!(s.success());
    };
    cp(&dir, &kept);
    ok(d, &["rm", "f"]);
    assert!(!dir.exists(), "fn rm left {}", dir.display());
    std::fs::create_dir_all(dir.parent().unwrap()).unwrap();
    cp(&kept, &dir);
    ok(d, &[&["deploy", "f"][..], &read].concat());
    ok(d, &["secret", "set", "f", "db=new-tenant-value"]);
    assert_eq!(ok(d, &["invoke", "f", "--data", ""]), "new-tenant-value");
}

/// A secret's value reaches the sandbox and nothing else: not the API's
/// answers (versions, configuration, secrets list, invocation records, logs,
/// metrics), not an error about a bad change, not the daemon's log.
#[test]
fn a_secret_value_never_comes_back() {
    let Some(t) = setup("a_secret_value_never_comes_back", &[]) else {
        return;
    };
    let d = &t.daemon;
    const VALUE: &str = "s3cr3t-V4LUE-never-shown";
    let mut seen = Vec::new();
    let mut cli = |args: &[&str]| {
        let (_, out, err) = d.cli(args);
        seen.push((format!("fn {args:?}"), out + &err));
    };
    cli(&[
        "deploy",
        "f",
        "--secret",
        &format!("db={VALUE}"),
        "--env",
        "A=1",
        "--handler",
        "grep -q V4LUE-never /run/secrets/db && echo matched",
    ]);
    cli(&["config", "f", "--env", "A=2"]);
    cli(&["secret", "set", "f", &format!("api={VALUE}")]);
    cli(&["secret", "ls", "f"]);
    cli(&["secret", "ls", "f", "--json"]);
    cli(&["show", "f"]);
    cli(&["show", "f", "--json"]);
    cli(&["ls"]);
    cli(&["invoke", "f", "--data", ""]);
    cli(&["logs", "f"]);
    cli(&["secret", "set", "f", &format!("Bad/Name={VALUE}")]);
    assert!(
        seen.iter().any(|(_, out)| out.contains("matched")),
        "the handler never read the secret: {seen:?}"
    );
    let mut http = |method: &str, path: &str, body: &[u8]| {
        let reply = d.http(method, path, body);
        seen.push((format!("{method} {path}"), reply.text()));
    };
    http("GET", "/v1/functions/f", b"");
    http("GET", "/v1/functions", b"");
    http("GET", "/v1/functions/f/secrets", b"");
    http("GET", "/v1/invocations?function=f", b"");
    http("GET", "/metrics", b"");
    let v = VALUE.as_bytes();
    http("PUT", "/v1/functions/f/secrets/Bad%2FName", v);
    http("PUT", "/v1/functions/f/secrets/..", v);
    http(
        "PUT",
        &format!("/v1/functions/f/secrets/{}", "a".repeat(300)),
        v,
    );
    http("PUT", "/v1/functions/nope/secrets/db", v);
    for body in [
        json!({"secrets": {"Bad Name": VALUE}}),
        json!({"secrets": {"db": VALUE}, "cpus": -1.0}),
        json!({"secrets": {"db": VALUE}, "bogus": 1}),
        json!({"secrets": {"db": VALUE}, "env": {"A=B": "1"}}),
        json!({"secrets": {"db": VALUE}, "env": {"A": "\u{0}"}}),
        json!({"secrets": VALUE}),
        json!({"secrets": [VALUE]}),
    ] {
        http("PATCH", "/v1/functions/f", body.to_string().as_bytes());
    }
    http(
        "POST",
        "/v1/functions",
        json!({"name": "g", "handler": ["true"], "secrets": VALUE})
            .to_string()
            .as_bytes(),
    );
    let ids: Vec<String> = d.http("GET", "/v1/invocations?function=f", b"").json()["invocations"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|i| i["id"].as_str().map(str::to_owned))
        .collect();
    for id in ids {
        http("GET", &format!("/v1/invocations/{id}"), b"");
    }
    seen.push(("the daemon's log".into(), d.log.lock().unwrap().clone()));
    for (what, text) in &seen {
        assert!(!text.contains(VALUE), "{what} showed the value: {text}");
    }
    // The error still says what is wrong.
    let reply = d.http("PATCH", "/v1/functions/f", br#"{"secrets": "x"}"#);
    assert!(
        reply
            .text()
            .contains("invalid type: string, expected a map"),
        "{}",
        reply.text()
    );
}

/// `--env-file` (or the manifest's `env_file`) naming a file that is not an
/// env file, such as a credentials file: refused, naming the line only.
#[test]
fn an_env_file_error_never_shows_the_files_content() {
    let Some(t) = setup("an_env_file_error_never_shows_the_files_content", &[]) else {
        return;
    };
    let d = &t.daemon;
    let creds = t.dir.path().join("shadow");
    std::fs::write(&creds, "root:$6$HASHED-PASSWORD:19000:0:99999:7:::\n").unwrap();
    let err = refused(
        d,
        &[
            "deploy",
            "f",
            "--handler",
            "true",
            "--env-file",
            creds.to_str().unwrap(),
        ],
    );
    assert!(err.contains("line 1"), "{err}");
    assert!(!err.contains("HASHED-PASSWORD"), "{err}");
    let code = t.dir.path().join("code");
    std::fs::create_dir(&code).unwrap();
    std::fs::write(
        code.join("alcove.toml"),
        format!(
            "name = \"m\"\nhandler = \"true\"\nenv_file = {:?}\n",
            creds.to_str().unwrap()
        ),
    )
    .unwrap();
    let err = refused(d, &["deploy", code.to_str().unwrap()]);
    assert!(err.contains("line 1"), "{err}");
    assert!(!err.contains("HASHED-PASSWORD"), "{err}");
}

/// Binds stored with a version are the operator's call at every invocation:
/// the daemon restarted without `--allow-bind` refuses them (and a device
/// node under the allowed directory opens nothing even while allowed).
#[test]
fn binds_stored_before_a_restart_without_allow_bind_are_refused() {
    let Some(t) = setup(
        "binds_stored_before_a_restart_without_allow_bind_are_refused",
        &[],
    ) else {
        return;
    };
    let shared = t.dir.path().join("shared");
    std::fs::create_dir_all(shared.join("data")).unwrap();
    std::fs::write(shared.join("data/file"), "bound content\n").unwrap();
    let mem = CString::new(shared.join("data/mem").as_os_str().as_bytes()).unwrap();
    // SAFETY: a NUL-terminated path; makes the character device 1:1 (/dev/mem).
    let made = unsafe { libc::mknod(mem.as_ptr(), libc::S_IFCHR | 0o666, libc::makedev(1, 1)) };
    assert_eq!(made, 0);
    let data = t.dir.path().join("data2");
    let mut allowed = Daemon::start(&data, &["--allow-bind", shared.to_str().unwrap()]);
    let bind = format!("{}:/data", shared.join("data").display());
    let handler = "sh -c 'cat /data/file; head -c1 /data/mem >/dev/null 2>&1 && echo opened-mem || echo closed-mem'";
    ok(
        &allowed,
        &["deploy", "b", "--bind", &bind, "--handler", handler],
    );
    let out = allowed.http("POST", "/v1/functions/b/invoke", b"").text();
    assert!(out.contains("bound content"), "{out}");
    assert!(
        out.contains("closed-mem") && !out.contains("opened-mem"),
        "{out}"
    );
    allowed.kill9();

    let plain = Daemon::start(&data, &[]);
    let reply = plain.http("POST", "/v1/functions/b/invoke", b"");
    assert_ne!(reply.status, 200, "{}", reply.text());
    assert!(!reply.text().contains("bound content"), "{}", reply.text());
    assert!(reply.text().contains("--allow-bind"), "{}", reply.text());
    // Nor can a configuration change carry the bind on.
    let err = refused(&plain, &["config", "b", "--env", "A=1"]);
    assert!(err.contains("--allow-bind"), "{err}");
}

/// Concurrent changes of one function: every version is new and the last
/// holds every secret set.
#[test]
fn concurrent_secret_changes_lose_nothing() {
    let Some(t) = setup("concurrent_secret_changes_lose_nothing", &[]) else {
        return;
    };
    let d = &t.daemon;
    ok(d, &["deploy", "c", "--handler", "ls /run/secrets"]);
    std::thread::scope(|s| {
        for i in 0..16 {
            s.spawn(move || {
                let reply = d.http("PUT", &format!("/v1/functions/c/secrets/k{i}"), b"v");
                assert_eq!(reply.status, 201, "{}", reply.text());
            });
        }
    });
    let shown = d.http("GET", "/v1/functions/c", b"").json();
    let versions: Vec<u64> = shown["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["version"].as_u64().unwrap())
        .collect();
    assert_eq!(versions.len(), 17, "{shown}");
    let out = ok(d, &["invoke", "c", "--data", ""]);
    assert_eq!(out.lines().count(), 16, "{out}");
}

/// The code (/fn) and the secrets (/run/secrets) are mounted after the
/// binds: a bind over them was hidden, one over /run failed every
/// invocation with a bare "No such file or directory". Refused at deploy.
#[test]
fn binds_over_the_code_or_the_secrets_are_refused() {
    let Some(t) = setup("binds_over_the_code_or_the_secrets_are_refused", &[]) else {
        return;
    };
    let shared = t.dir.path().join("shared");
    std::fs::create_dir_all(&shared).unwrap();
    let d = Daemon::start(
        &t.dir.path().join("data2"),
        &["--allow-bind", shared.to_str().unwrap()],
    );
    let src = shared.display().to_string();
    for target in [
        "/run",
        "/run/",
        "/fn",
        "/fn/lib",
        "/run/secrets",
        "//run/secrets/db",
    ] {
        let bind = format!("{src}:{target}");
        let err = refused(
            &d,
            &[
                "deploy",
                "b",
                "--bind",
                &bind,
                "--secret",
                "db=x",
                "--handler",
                "true",
            ],
        );
        assert!(err.contains("/run/secrets are alcove's"), "{target}: {err}");
    }
    ok(
        &d,
        &[
            "deploy",
            "b",
            "--bind",
            &format!("{src}:/runner"),
            "--secret",
            "db=x",
            "--handler",
            "ls /runner",
        ],
    );
    ok(&d, &["invoke", "b", "--data", ""]);
}

/// Each bind is an open descriptor and a mount at every invocation (5000
/// took 0.4 s of the daemon's time; a 64 MiB body holds a million): bounded.
#[test]
fn a_function_has_a_bounded_number_of_binds() {
    let Some(t) = setup("a_function_has_a_bounded_number_of_binds", &[]) else {
        return;
    };
    let shared = t.dir.path().join("shared");
    std::fs::create_dir_all(&shared).unwrap();
    let d = Daemon::start(
        &t.dir.path().join("data2"),
        &["--allow-bind", shared.to_str().unwrap()],
    );
    let binds = |n: usize| -> Vec<Value> {
        (0..n)
            .map(|i| json!({"source": shared.to_str().unwrap(), "target": format!("/b{i}")}))
            .collect()
    };
    let body = json!({"name": "m", "handler": ["true"], "binds": binds(65)});
    let reply = d.http("POST", "/v1/functions", body.to_string().as_bytes());
    assert_eq!(reply.status, 400, "{}", reply.text());
    assert!(reply.text().contains("at most 64"), "{}", reply.text());
    let body = json!({"name": "m", "handler": ["true"], "binds": binds(64)});
    let reply = d.http("POST", "/v1/functions", body.to_string().as_bytes());
    assert_eq!(reply.status, 201, "{}", reply.text());
    assert_eq!(d.http("POST", "/v1/functions/m/invoke", b"").status, 200);
}

/// An allowed directory holding the data directory let a function bind
/// `alcove.db` (mode 0644 in a 0700 directory the bind skips) and read every
/// function's secrets. The daemon refuses to start so.
#[test]
fn an_allowed_directory_holding_the_data_directory_is_refused() {
    let Some(t) = setup(
        "an_allowed_directory_holding_the_data_directory_is_refused",
        &[],
    ) else {
        return;
    };
    let data = t.dir.path().join("data2");
    for allowed in [t.dir.path().to_owned(), data.join("secrets")] {
        std::fs::create_dir_all(&allowed).unwrap();
        let out = std::process::Command::new("timeout")
            .args(["20", common::ALCOVE, "serve", "--listen", "127.0.0.1:0"])
            .arg("--data-dir")
            .arg(&data)
            .arg("--allow-bind")
            .arg(&allowed)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        let code = out.status.code();
        assert!(
            code != Some(0) && code != Some(124),
            "{}: {err}",
            allowed.display()
        );
        assert!(err.contains("data directory"), "{err}");
    }
}

/// `fn rm` racing a configuration change: the change either comes first
/// (and is removed with the function) or finds no function. It never
/// brings the removed function back with its old secrets.
#[test]
fn a_change_racing_fn_rm_never_brings_the_function_back() {
    let Some(t) = setup("a_change_racing_fn_rm_never_brings_the_function_back", &[]) else {
        return;
    };
    let d = &t.daemon;
    for round in 0..150 {
        let body = json!({"name": "r", "handler": ["true"], "secrets": {"old": "x"}});
        let reply = d.http("POST", "/v1/functions", body.to_string().as_bytes());
        assert_eq!(reply.status, 201, "{}", reply.text());
        std::thread::scope(|s| {
            s.spawn(|| d.http("PATCH", "/v1/functions/r", br#"{"env": {"A": "1"}}"#));
            s.spawn(|| d.http("DELETE", "/v1/functions/r", b""));
        });
        let left = d.http("GET", "/v1/functions/r", b"");
        assert_eq!(left.status, 404, "round {round}: {}", left.text());
    }
}

/// `unset_env` was searched once per inherited variable: 15000 variables
/// and a 15 MiB deploy of 1.5 million names to unset held the deploy lock (every
/// deploy of every function) for minutes. Now a set.
#[test]
fn a_long_unset_list_is_cheap() {
    let Some(t) = setup("a_long_unset_list_is_cheap", &[]) else {
        return;
    };
    let d = &t.daemon;
    let env: serde_json::Map<String, Value> =
        (0..15_000).map(|i| (format!("V{i}"), json!(""))).collect();
    let body = json!({"name": "u", "handler": ["true"], "env": env});
    let reply = d.http("POST", "/v1/functions", body.to_string().as_bytes());
    assert_eq!(reply.status, 201, "{}", &reply.text()[..200]);
    let unset: Vec<String> = (0..1_500_000).map(|i| format!("X{i}")).collect();
    let body = json!({"name": "u", "unset_env": unset, "env": {"A": "1"}});
    let started = std::time::Instant::now();
    let reply = d.http("POST", "/v1/functions", body.to_string().as_bytes());
    assert_eq!(
        reply.status,
        201,
        "{}",
        &reply.text()[..200.min(reply.text().len())]
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
}
