//! Configuration that persists: inheritance between versions, `fn config`,
//! `fn secret`, identical redeploys, the manifest and env files, the sandbox
//! flags `fn deploy` shares with `run`, and operator-gated binds. A real
//! daemon, driven through `alcove fn` and over HTTP.

mod common;
use common::daemon::{ok, refused, setup, Daemon};
use common::*;
use serde_json::{json, Value};
use std::path::Path;

fn invoke(d: &Daemon, name: &str) -> String {
    ok(d, &["invoke", name, "--data", ""])
}

fn versions(d: &Daemon, name: &str) -> Vec<Value> {
    d.cli_json(&["show", name])["versions"]
        .as_array()
        .unwrap()
        .clone()
}

/// Whether `fn show` printed the setting `label` with `value` on one line.
fn shows(shown: &str, label: &str, value: &str) -> bool {
    shown.lines().any(|line| {
        let mut words = line.split_whitespace();
        words.next() == Some(label) && words.collect::<Vec<_>>().join(" ") == value
    })
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
}

#[test]
fn a_redeploy_keeps_secrets_and_env_and_says_what_it_inherited() {
    let Some(t) = setup(
        "a_redeploy_keeps_secrets_and_env_and_says_what_it_inherited",
        &[],
    ) else {
        return;
    };
    let d = &t.daemon;
    let code = t.dir.path().join("code");
    std::fs::create_dir(&code).unwrap();
    write(
        &code.join("h.sh"),
        "printf '%s %s %s\\n' \"$(cat /run/secrets/db)\" \"$LOG_LEVEL\" \"$(cat /fn/v)\"\n",
    );
    write(&code.join("v"), "one");
    let dir = code.to_str().unwrap();
    let out = ok(
        d,
        &[
            "deploy",
            "hello",
            "--handler",
            "sh /fn/h.sh",
            "--code",
            dir,
            "--secret",
            "db=pw1",
            "--env",
            "LOG_LEVEL=debug",
            "--memory",
            "128M",
        ],
    );
    assert!(out.starts_with("deployed hello version 1"), "{out}");
    assert!(
        !out.contains("inherited"),
        "a first version inherits nothing: {out}"
    );
    assert_eq!(invoke(d, "hello"), "pw1 debug one\n");

    // New code only: the secret, the env and the memory limit stay.
    write(&code.join("v"), "two");
    let out = ok(d, &["deploy", "hello", "--code", dir]);
    assert!(out.starts_with("deployed hello version 2"), "{out}");
    let line = out.lines().nth(1).unwrap_or_default();
    assert!(
        line.starts_with("inherited from version 1: env LOG_LEVEL, secrets db, "),
        "{out}"
    );
    for part in ["handler 'sh /fn/h.sh'", "memory 128M"] {
        assert!(line.contains(part), "{part} missing from: {line}");
    }
    assert!(!line.ends_with(", code"), "new code was given: {line}");
    assert_eq!(invoke(d, "hello"), "pw1 debug two\n");
    assert_eq!(versions(d, "hello")[1]["config"]["memory_bytes"], 128 << 20);

    // Over HTTP, a deploy of the env alone keeps the code and says so.
    let reply = d.http(
        "POST",
        "/v1/functions",
        br#"{"name": "hello", "env": {"LOG_LEVEL": "info"}}"#,
    );
    assert_eq!(reply.status, 201, "{}", reply.text());
    let v = reply.json();
    assert_eq!(
        (v["version"].clone(), v["inherited_from"].clone()),
        (json!(3), json!(2))
    );
    let inherited = v["inherited"].as_array().unwrap();
    for name in ["secrets.db", "code", "handler", "memory_bytes"] {
        assert!(inherited.contains(&json!(name)), "{name} not in {v}");
    }
    assert!(!inherited.contains(&json!("env.LOG_LEVEL")), "{v}");
    assert_eq!(invoke(d, "hello"), "pw1 info two\n");

    // --no-inherit starts from the defaults: no secret, no env, no code.
    let out = ok(
        d,
        &[
            "deploy",
            "hello",
            "--no-inherit",
            "--handler",
            "sh -c 'ls /run/secrets /fn; echo [$LOG_LEVEL]'",
        ],
    );
    assert!(!out.contains("inherited"), "{out}");
    let (code, out, err) = d.cli(&["invoke", "hello", "--data", ""]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "[]\n", "no secrets, no code, no env");
    assert_eq!(versions(d, "hello")[3]["code_digest"], Value::Null);
}

#[test]
fn fn_config_changes_one_variable_without_new_code() {
    let Some(t) = setup("fn_config_changes_one_variable_without_new_code", &[]) else {
        return;
    };
    let d = &t.daemon;
    let code = t.dir.path().join("code");
    std::fs::create_dir(&code).unwrap();
    write(&code.join("h.sh"), "echo \"$A $B [$C]\"\n");
    ok(
        d,
        &[
            "deploy",
            "cfg",
            "--handler",
            "sh h.sh",
            "--code",
            code.to_str().unwrap(),
            "--env",
            "A=1",
            "--env",
            "B=1",
            "--env",
            "C=1",
        ],
    );
    assert_eq!(invoke(d, "cfg"), "1 1 [1]\n");
    let out = ok(d, &["config", "cfg", "--env", "A=2", "--unset-env", "C"]);
    assert!(out.starts_with("deployed cfg version 2"), "{out}");
    assert!(out.contains("env B"), "{out}");
    assert!(out.contains(", code"), "the code is inherited: {out}");
    assert_eq!(invoke(d, "cfg"), "2 1 []\n");
    let v = versions(d, "cfg");
    assert_eq!(v.len(), 2);
    assert_eq!(v[0]["code_digest"], v[1]["code_digest"], "same code");
    assert!(v[1]["code_digest"].is_string());

    // Limits too, with the same flags as deploy.
    ok(d, &["config", "cfg", "--memory", "64M", "--timeout", "3s"]);
    let c = &versions(d, "cfg")[2]["config"];
    assert_eq!(
        (c["memory_bytes"].clone(), c["timeout_ms"].clone()),
        (json!(64 << 20), json!(3000))
    );
    assert!(refused(d, &["config", "cfg"]).contains("nothing to change"));
    assert!(refused(d, &["config", "nosuch", "--env", "A=1"]).contains("no function"));

    // Over HTTP: PATCH with the fields to change.
    let reply = d.http("PATCH", "/v1/functions/cfg", br#"{"env": {"B": "3"}}"#);
    assert_eq!(reply.status, 201, "{}", reply.text());
    assert_eq!(invoke(d, "cfg"), "2 3 []\n");
    let reply = d.http("PATCH", "/v1/functions/cfg", br#"{"memroy": 1}"#);
    assert_eq!(reply.status, 400);
    assert!(reply.text().contains("memroy"), "{}", reply.text());
    let reply = d.http("PATCH", "/v1/functions/nosuch", br#"{"env": {"B": "3"}}"#);
    assert_eq!(
        (reply.status, reply.code()),
        (404, "function_not_found".into())
    );
}

#[test]
fn secrets_are_set_removed_and_listed_by_name_only() {
    let Some(t) = setup("secrets_are_set_removed_and_listed_by_name_only", &[]) else {
        return;
    };
    let d = &t.daemon;
    let handler = "sh -c 'for f in /run/secrets/*; do [ -e \"$f\" ] && echo \"${f##*/}=$(cat $f)\"; done; true'";
    ok(d, &["deploy", "sec", "--handler", handler]);
    assert_eq!(invoke(d, "sec"), "");
    let out = ok(d, &["secret", "set", "sec", "api=value-1f9"]);
    assert!(out.starts_with("deployed sec version 2"), "{out}");
    let file = t.dir.path().join("db");
    write(&file, "from-file-77c");
    ok(
        d,
        &["secret", "set", "sec", &format!("db=@{}", file.display())],
    );
    assert_eq!(invoke(d, "sec"), "api=value-1f9\ndb=from-file-77c\n");
    let listed = ok(d, &["secret", "ls", "sec"]);
    assert_eq!(listed, "api\ndb\n");
    let reply = d.http("GET", "/v1/functions/sec/secrets", b"");
    assert_eq!(reply.json(), json!({ "secrets": ["api", "db"] }));
    for text in [
        &listed,
        &reply.text(),
        &d.http("GET", "/v1/functions/sec", b"").text(),
    ] {
        assert!(
            !text.contains("value-1f9") && !text.contains("from-file"),
            "{text}"
        );
    }

    let out = ok(d, &["secret", "rm", "sec", "api"]);
    assert!(out.starts_with("deployed sec version 4"), "{out}");
    assert_eq!(invoke(d, "sec"), "db=from-file-77c\n", "api is gone");
    assert!(refused(d, &["secret", "rm", "sec", "api"]).contains("no secret"));

    // Over HTTP: the body is the value.
    let reply = d.http("PUT", "/v1/functions/sec/secrets/token", b"t0k3n");
    assert_eq!(reply.status, 201, "{}", reply.text());
    assert_eq!(invoke(d, "sec"), "db=from-file-77c\ntoken=t0k3n\n");
    let reply = d.http("PUT", "/v1/functions/sec/secrets/token", b"t0k3n");
    assert_eq!(
        (reply.status, reply.json()["unchanged"].clone()),
        (200, json!(true))
    );
    let reply = d.http("DELETE", "/v1/functions/sec/secrets/db", b"");
    assert_eq!(reply.status, 201, "{}", reply.text());
    assert_eq!(invoke(d, "sec"), "token=t0k3n\n");
    let reply = d.http("DELETE", "/v1/functions/sec/secrets/db", b"");
    assert_eq!(
        (reply.status, reply.code()),
        (404, "secret_not_found".into())
    );
    let reply = d.http("PUT", "/v1/functions/sec/secrets/Bad.Name", b"x");
    assert_eq!(reply.status, 400, "{}", reply.text());
}

#[test]
fn an_identical_redeploy_makes_no_version() {
    let Some(t) = setup("an_identical_redeploy_makes_no_version", &[]) else {
        return;
    };
    let d = &t.daemon;
    let code = t.dir.path().join("code");
    std::fs::create_dir(&code).unwrap();
    write(&code.join("h.sh"), "echo hi\n");
    let args = [
        "deploy",
        "same",
        "--handler",
        "sh h.sh",
        "--code",
        code.to_str().unwrap(),
        "--env",
        "A=1",
        "--secret",
        "s=1",
    ];
    assert!(ok(d, &args).starts_with("deployed same version 1"));
    assert_eq!(ok(d, &args), "same is unchanged (version 1)\n");
    assert_eq!(
        ok(d, &["deploy", "same"]),
        "same is unchanged (version 1)\n"
    );
    assert_eq!(versions(d, "same").len(), 1);
    let reply = d.http(
        "POST",
        "/v1/functions",
        br#"{"name": "same", "env": {"A": "1"}}"#,
    );
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(
        (
            reply.json()["unchanged"].clone(),
            reply.json()["version"].clone()
        ),
        (json!(true), json!(1))
    );
    // A secret's value counts, not only its name.
    let mut other = args.to_vec();
    other[9] = "s=2";
    assert!(ok(d, &other).starts_with("deployed same version 2"));
    assert_eq!(versions(d, "same").len(), 2);
}

#[test]
fn a_manifest_deploys_and_flags_override_it() {
    let Some(t) = setup("a_manifest_deploys_and_flags_override_it", &[]) else {
        return;
    };
    let d = &t.daemon;
    let dir = t.dir.path().join("fn");
    std::fs::create_dir(&dir).unwrap();
    write(&dir.join("h.sh"), "echo \"$A $B $C\"\n");
    write(
        &dir.join("prod.env"),
        "# settings\n\nC=from-env-file\nexport B=\"overridden by [env]\"\n",
    );
    write(
        &dir.join("alcove.toml"),
        "name = \"man\"\nhandler = \"sh h.sh\"\nmemory = \"96M\"\ntimeout = \"5s\"\n\
         tmpfs_size = \"8M\"\nenv_file = \"prod.env\"\n\n[env]\nA = \"from-manifest\"\nB = \"b\"\n",
    );
    let out = ok(d, &["deploy", dir.to_str().unwrap()]);
    assert!(out.starts_with("deployed man version 1, code "), "{out}");
    assert_eq!(invoke(d, "man"), "from-manifest b from-env-file\n");
    let c = &versions(d, "man")[0]["config"];
    assert_eq!(
        (
            c["memory_bytes"].clone(),
            c["timeout_ms"].clone(),
            c["tmpfs_bytes"].clone()
        ),
        (json!(96 << 20), json!(5000), json!(8 << 20))
    );
    // Flags win over the manifest.
    ok(
        d,
        &[
            "deploy",
            dir.to_str().unwrap(),
            "--env",
            "A=from-flag",
            "--memory",
            "64M",
        ],
    );
    assert_eq!(invoke(d, "man"), "from-flag b from-env-file\n");
    assert_eq!(versions(d, "man")[1]["config"]["memory_bytes"], 64 << 20);
    // --manifest FILE works from anywhere.
    let moved = t.dir.path().join("other.toml");
    write(
        &moved,
        "name = \"man2\"\nhandler = [\"sh\", \"-c\", \"echo argv\"]\ncode = \"fn\"\n",
    );
    ok(d, &["deploy", "--manifest", moved.to_str().unwrap()]);
    assert_eq!(invoke(d, "man2"), "argv\n");

    // An unknown key is named, with its line.
    write(
        &dir.join("alcove.toml"),
        "name = \"man\"\nhandler = \"sh h.sh\"\nmemroy = \"1M\"\n",
    );
    let err = refused(d, &["deploy", dir.to_str().unwrap()]);
    assert!(err.contains("memroy") && err.contains("line 3"), "{err}");
    // A bad env file line is named.
    let env = t.dir.path().join("bad.env");
    write(&env, "A=1\n# fine\nthis is not a pair\n");
    let err = refused(d, &["deploy", "man", "--env-file", env.to_str().unwrap()]);
    assert!(err.contains("line 3") && err.contains("bad.env"), "{err}");
    assert_eq!(versions(d, "man").len(), 2, "nothing was deployed");
}

#[test]
fn deploy_takes_the_run_flags_and_they_take_effect() {
    let Some(t) = setup("deploy_takes_the_run_flags_and_they_take_effect", &[]) else {
        return;
    };
    let d = &t.daemon;
    let handler = "sh -c 'id -u; id -g; pwd; df -k /tmp | tail -n 1'";
    ok(
        d,
        &[
            "deploy",
            "flags",
            "--handler",
            handler,
            "--tmpfs-size",
            "8M",
            "--workdir",
            "/tmp",
            "--user",
            "1234:2345",
            "--cpu-time",
            "3s",
        ],
    );
    let out = invoke(d, "flags");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(&lines[..3], ["1234", "2345", "/tmp"], "{out}");
    let total_kib: u64 = lines[3].split_whitespace().nth(1).unwrap().parse().unwrap();
    assert_eq!(total_kib, 8192, "/tmp is 8M: {out}");
    assert_eq!(versions(d, "flags")[0]["config"]["cpu_time_ms"], 3000);
    let shown = ok(d, &["show", "flags"]);
    for (label, value) in [
        ("cpu-time", "3s"),
        ("tmpfs-size", "8M"),
        ("workdir", "/tmp"),
        ("user", "1234:2345"),
    ] {
        assert!(
            shows(&shown, label, value),
            "{label} {value} missing from fn show:\n{shown}"
        );
    }

    // The CPU-time limit ends a spinner.
    ok(
        d,
        &[
            "deploy",
            "spin",
            "--handler",
            "sh -c 'while :; do :; done'",
            "--cpu-time",
            "300ms",
            "--timeout",
            "20s",
        ],
    );
    let reply = d.http("POST", "/v1/functions/spin/invoke", b"");
    assert_eq!(
        reply.header("x-alcove-status"),
        Some("cpu_time"),
        "{}",
        reply.text()
    );

    // --output-limit keeps that many bytes of the response.
    ok(
        d,
        &[
            "deploy",
            "big",
            "--handler",
            "sh -c 'head -c 5000 /dev/zero'",
            "--output-limit",
            "1K",
        ],
    );
    let reply = d.http("POST", "/v1/functions/big/invoke", b"");
    assert_eq!(reply.code(), "response_too_large");
    assert_eq!(
        reply.json()["error"]["invocation"]["output_truncated"],
        true
    );
}

#[test]
fn binds_are_refused_unless_the_operator_allows_them() {
    let Some(t) = setup("binds_are_refused_unless_the_operator_allows_them", &[]) else {
        return;
    };
    let shared = t.dir.path().join("shared");
    std::fs::create_dir_all(shared.join("data")).unwrap();
    write(&shared.join("data/file"), "bound content\n");
    let outside = t.dir.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    write(&outside.join("file"), "secret host file\n");
    let bind = format!("{}:/data", shared.join("data").display());
    let handler = ["--handler", "cat /data/file"];

    let err = refused(
        &t.daemon,
        &[&["deploy", "b", "--bind", &bind][..], &handler].concat(),
    );
    assert!(err.contains("alcove serve --allow-bind"), "{err}");

    // A second daemon, allowing the shared directory read-only.
    let allowed = Daemon::start(
        &t.dir.path().join("data2"),
        &["--allow-bind", shared.to_str().unwrap()],
    );
    let d = &allowed;
    ok(
        d,
        &[&["deploy", "b", "--bind", &bind][..], &handler].concat(),
    );
    assert_eq!(invoke(d, "b"), "bound content\n");
    let resolved = std::fs::canonicalize(shared.join("data")).unwrap();
    let shown = ok(d, &["show", "b"]);
    assert!(
        shows(&shown, "bind", &format!("{}:/data", resolved.display())),
        "{shown}"
    );
    let err = refused(d, &["deploy", "b", "--bind", &format!("{bind}:rw")]);
    assert!(err.contains("--allow-bind DIR:rw"), "{err}");
    let out_bind = format!("{}:/data", outside.display());
    let err = refused(d, &["deploy", "b", "--bind", &out_bind]);
    assert!(err.contains("not under"), "{err}");
    // A link inside that leads out is judged by where it leads.
    let link = shared.join("link");
    std::os::unix::fs::symlink(&outside, &link).unwrap();
    let err = refused(
        d,
        &[
            "deploy",
            "b",
            "--bind",
            &format!("{}:/data", link.display()),
        ],
    );
    assert!(err.contains("not under"), "{err}");

    // Checked again at each invocation: the path now leads out.
    std::fs::remove_dir_all(shared.join("data")).unwrap();
    std::os::unix::fs::symlink(&outside, shared.join("data")).unwrap();
    let reply = d.http("POST", "/v1/functions/b/invoke", b"");
    assert_ne!(reply.status, 200);
    assert!(
        !reply.text().contains("secret host file"),
        "{}",
        reply.text()
    );
    assert!(reply.text().contains("not under"), "{}", reply.text());
}

/// The help line of `flag` in `alcove ARGS --help`, spaces collapsed.
fn help_line(args: &[&str], flag: &str) -> String {
    let out = alcove(&[args, &["--help"]].concat());
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let line = text
        .lines()
        .find(|l| {
            l.trim_start()
                .trim_start_matches("-e, ")
                .starts_with(&format!("{flag} "))
        })
        .unwrap_or_else(|| panic!("alcove {args:?} --help has no {flag}:\n{text}"));
    line.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[test]
fn run_and_deploy_share_their_sandbox_flags() {
    for flag in [
        "--memory",
        "--cpus",
        "--pids",
        "--timeout",
        "--cpu-time",
        "--output-limit",
        "--tmpfs-size",
        "--workdir",
        "--user",
        "--env",
        "--bind",
        "--net",
    ] {
        let run = help_line(&["run"], flag);
        let deploy = help_line(&["fn", "deploy"], flag);
        assert_eq!(run, deploy, "{flag} differs");
        assert!(run.contains('<'), "{flag} has a metavar: {run}");
        assert_eq!(help_line(&["fn", "config"], flag), run);
    }
    assert!(help_line(&["run"], "--output-limit").contains("BYTES of stdout"));
}

#[test]
fn run_output_limit_caps_stdout_and_leaves_stderr() {
    if !root_or_skip("run_output_limit_caps_stdout_and_leaves_stderr") {
        return;
    }
    let _g = serial();
    let run = sandbox(
        &["--output-limit", "100", "--timeout", "10s"],
        &[
            "sh",
            "-c",
            "head -c 1000 /dev/zero | tr '\\0' e >&2; head -c 1000 /dev/zero | tr '\\0' o",
        ],
    );
    assert_eq!(run.stdout.len(), 100, "{run:?}");
    assert_eq!(run.stderr.len(), 1000, "stderr is not capped: {run:?}");
    assert_eq!(run.report["output_truncated"], true);
}
