//! Code as people have it (links inside the code directory, an ignore
//! file), a host view that runs ordinary programs (awk, CA certificates,
//! services; never the host's secrets), images by their short names and
//! pinned by the functions that run them, and `--accel gpu` without a GPU.

mod common;
use base64::Engine as _;
use common::daemon::setup;
use common::oci::{layout, tar_of, Entry};
use common::*;
use serde_json::json;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

#[test]
fn a_tree_with_links_inside_deploys_and_runs_and_the_ignore_file_leaves_files_out() {
    let test = "a_tree_with_links_inside_deploys_and_runs_and_the_ignore_file_leaves_files_out";
    if !python_or_skip(test) {
        return;
    }
    let Some(s) = setup(test, &[]) else { return };
    let code = s.dir.path().join("code");
    let mk = |p: &str, text: &str| {
        let path = code.join(p);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    };
    // A virtualenv-like tree: the package lives in vendor/, lib/ links to it.
    mk(
        "vendor/pkg/__init__.py",
        "GREETING = 'hello through a link'\n",
    );
    mk("lib/tool.py", "print('tool ran')\n");
    mk("secret.txt", "left out\n");
    mk("build/cache.bin", "left out too\n");
    mk(".git/HEAD", "ref: refs/heads/main\n");
    mk(".alcoveignore", "secret.txt\nbuild/\n");
    mk(
        "main.py",
        "import os, sys, subprocess\n\
         sys.path.insert(0, '/fn/lib')\n\
         import pkg\n\
         print(pkg.GREETING)\n\
         print('islink', os.path.islink('/fn/lib/pkg'), os.readlink('/fn/bin/tool'))\n\
         subprocess.run(['python3', '/fn/bin/tool'], check=True)\n\
         print('missing', [p for p in ['secret.txt', 'build', '.git'] if not os.path.exists('/fn/' + p)])\n",
    );
    std::fs::create_dir_all(code.join("bin")).unwrap();
    std::os::unix::fs::symlink("../vendor/pkg", code.join("lib/pkg")).unwrap();
    std::os::unix::fs::symlink("../lib/tool.py", code.join("bin/tool")).unwrap();

    let d = &s.daemon;
    let code_dir = code.to_str().unwrap();
    let (rc, _, err) = d.cli(&[
        "deploy",
        "venv",
        "--handler",
        "python3 -u /fn/main.py",
        "--code",
        code_dir,
    ]);
    assert_eq!(rc, 0, "{err}");
    let (rc, out, err) = d.cli(&["invoke", "venv"]);
    assert_eq!(rc, 0, "{err}");
    assert_eq!(
        out,
        "hello through a link\n\
         islink True ../lib/tool.py\n\
         tool ran\n\
         missing ['secret.txt', 'build', '.git']\n"
    );
    // The stored code holds the links as links.
    let stored = std::fs::read_dir(d.data.join("code"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    assert!(std::fs::symlink_metadata(stored.join("lib/pkg"))
        .unwrap()
        .file_type()
        .is_symlink());

    // A link out of the directory is refused by the CLI, naming the file.
    std::fs::create_dir_all(code.join("venv/bin")).unwrap();
    std::os::unix::fs::symlink("/usr/bin/python3", code.join("venv/bin/python3")).unwrap();
    let (rc, _, err) = d.cli(&[
        "deploy",
        "out",
        "--handler",
        "python3 /fn/main.py",
        "--code",
        code_dir,
    ]);
    assert_eq!(rc, 125, "{err}");
    let named =
        format!("{code_dir}/venv/bin/python3 -> /usr/bin/python3 leaves the code directory");
    assert!(err.contains(&named), "{err}");
    assert!(err.contains("python3 -m venv --copies"), "{err}");
    let (rc, _, _) = d.cli(&["show", "out"]);
    assert_ne!(rc, 0, "nothing was deployed");
}

#[test]
fn the_daemon_refuses_a_hostile_archive_with_a_link_out() {
    let Some(s) = setup("the_daemon_refuses_a_hostile_archive_with_a_link_out", &[]) else {
        return;
    };
    let d = &s.daemon;
    let outside = tempfile::tempdir().unwrap();
    let target = outside.path().to_str().unwrap().to_owned();
    let deploy = |entries: &[Entry]| {
        let body = json!({
            "name": "hostile",
            "handler": ["true"],
            "code": base64::engine::general_purpose::STANDARD.encode(tar_of(entries)),
        });
        d.http("POST", "/v1/functions", body.to_string().as_bytes())
    };
    for (entries, expect) in [
        (
            vec![
                Entry::Symlink("evil", &target),
                Entry::File("evil/planted", b"x"),
            ],
            format!("evil -> {target} leaves the code directory"),
        ),
        (
            vec![Entry::Dir("a"), Entry::Symlink("a/up", "../../..")],
            "a/up -> ../../.. leaves the code directory".to_owned(),
        ),
        (
            vec![
                Entry::Symlink("here", "."),
                Entry::File("here/through", b"x"),
            ],
            "here/through lies under the link here".to_owned(),
        ),
        (
            vec![Entry::File("a", b"x"), Entry::HardLink("b", "a")],
            "b is a hard link".to_owned(),
        ),
    ] {
        let reply = deploy(&entries);
        assert_eq!(reply.status, 400, "{}", reply.text());
        assert_eq!(reply.code(), "invalid_code", "{}", reply.text());
        assert!(reply.text().contains(&expect), "{}", reply.text());
    }
    assert_eq!(
        std::fs::read_dir(outside.path()).unwrap().count(),
        0,
        "nothing written outside"
    );
    assert_eq!(
        std::fs::read_dir(d.data.join("tmp")).map_or(0, |r| r.count()),
        0,
        "no staging left"
    );
    assert_eq!(d.http("GET", "/v1/functions/hostile", b"").status, 404);
}

fn run(options: &[&str], script: &str) -> (i32, String, String) {
    let mut args = vec!["run"];
    args.extend_from_slice(options);
    args.extend(["--", "sh", "-c", script]);
    let out = alcove(&args);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_host_view_runs_ordinary_programs_without_the_hosts_secrets() {
    let test = "the_host_view_runs_ordinary_programs_without_the_hosts_secrets";
    if !root_or_skip(test) || !python_or_skip(test) {
        return;
    }
    let _g = serial();
    let (rc, out, err) = run(&[], "awk 'BEGIN{print 1+1}'");
    assert_eq!((rc, out.as_str()), (0, "2\n"), "{err}");
    let (rc, out, err) = run(
        &[],
        "python3 -c 'import socket; print(socket.getservbyname(\"https\", \"tcp\"), socket.getprotobyname(\"udp\"))'",
    );
    assert_eq!((rc, out.as_str()), (0, "443 17\n"), "{err}");
    // The certificates, and what links into them, are there.
    let bundle = "/etc/ssl/certs/ca-certificates.crt";
    if Path::new(bundle).exists() {
        let (rc, out, err) = run(&[], &format!("grep -c 'BEGIN CERTIFICATE' {bundle}"));
        let host = std::fs::read_to_string(bundle)
            .unwrap()
            .matches("BEGIN CERTIFICATE")
            .count();
        assert_eq!((rc, out.trim()), (0, host.to_string().as_str()), "{err}");
    }
    // Python loads the host's CA store by default: as many CAs as on the host.
    let stats = "import ssl; print(ssl.create_default_context().cert_store_stats()['x509_ca'])";
    let host = Command::new(PYTHON).args(["-c", stats]).output().unwrap();
    let host = String::from_utf8_lossy(&host.stdout).trim().to_owned();
    assert!(
        host.parse::<u32>().is_ok_and(|n| n > 0),
        "the host has CAs: {host:?}"
    );
    let (rc, out, err) = run(&[], &format!("python3 -c \"{stats}\""));
    assert_eq!((rc, out.trim()), (0, host.as_str()), "{err}");
    // The host's secrets are not: each exists on the host (where it does) and not inside.
    for secret in [
        "/etc/shadow",
        "/etc/gshadow",
        "/etc/ssh",
        "/etc/sudoers",
        "/etc/ssl/private",
        "/etc/machine-id",
    ] {
        let (rc, out, _) = run(&[], &format!("ls -d {secret} 2>/dev/null || echo absent"));
        assert_eq!((rc, out.as_str()), (0, "absent\n"), "{secret} is visible");
    }
    assert!(
        Path::new("/etc/shadow").exists(),
        "the test means something only if the host has one"
    );
    // Read-only, and no way to write through to the host.
    let (rc, out, _) = run(
        &[],
        "echo x >> /etc/services 2>/dev/null && echo wrote || echo refused",
    );
    assert_eq!((rc, out.as_str()), (0, "refused\n"));
}

/// A CA, and a server certificate for localhost it signs, made with openssl.
fn make_ca(dir: &Path) {
    let sh = |script: &str| {
        let out = Command::new("sh")
            .arg("-ec")
            .arg(script)
            .current_dir(dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{script}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    sh("openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 2 -subj /CN=alcove-test-ca 2>/dev/null");
    sh("openssl req -newkey rsa:2048 -nodes -keyout server.key -out server.csr -subj /CN=localhost 2>/dev/null");
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\n",
    )
    .unwrap();
    sh("openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out server.pem -days 2 -extfile ext.cnf 2>/dev/null");
}

struct Server(std::process::Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn an_https_certificate_check_works_in_the_host_view() {
    let test = "an_https_certificate_check_works_in_the_host_view";
    if !root_or_skip(test) || !python_or_skip(test) {
        return;
    }
    if Command::new("openssl").arg("version").output().is_err() {
        skip_unprovided(
            test,
            "needs the openssl command (the ca-certificates package brings it)",
        );
        return;
    }
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    // The sandbox's user reads ca.pem through the bind.
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    make_ca(dir.path());
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let _server = Server(
        Command::new("openssl")
            .args([
                "s_server",
                "-quiet",
                "-www",
                "-accept",
                &format!("127.0.0.1:{port}"),
            ])
            .args(["-cert", "server.pem", "-key", "server.key"])
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_until("the TLS server listens", Duration::from_secs(10), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    let ca_dir = format!("{}:/ca", dir.path().display());
    let check = |cafile: &str| {
        let script = format!(
            "import socket, ssl\n\
             ctx = ssl.create_default_context({cafile})\n\
             try:\n\
             \x20   with socket.create_connection(('127.0.0.1', {port})) as raw:\n\
             \x20       with ctx.wrap_socket(raw, server_hostname='localhost') as tls:\n\
             \x20           print('verified', dict(x[0] for x in tls.getpeercert()['issuer'])['commonName'])\n\
             except ssl.SSLCertVerificationError as e:\n\
             \x20   print('refused', e.verify_message)\n"
        );
        let out = alcove(&[
            "run", "--net", "host", "--bind", &ca_dir, "--", "python3", "-c", &script,
        ]);
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(0), "{err}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    // The chain checks against the test CA, and the check is real: without
    // that CA (the host's store only) the same server is refused.
    assert_eq!(check("cafile='/ca/ca.pem'"), "verified alcove-test-ca\n");
    assert_eq!(
        check(""),
        "refused unable to get local issuer certificate\n"
    );
}

#[test]
fn images_are_found_by_short_names_and_pinned_by_the_functions_that_run_them() {
    let test = "images_are_found_by_short_names_and_pinned_by_the_functions_that_run_them";
    if !root_or_skip(test) {
        return;
    }
    let Ok(busybox) = std::fs::read("/bin/busybox") else {
        skip_unprovided(
            test,
            "needs /bin/busybox (busybox-static, scripts/packages.sh)",
        );
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let store_arg = store.to_str().unwrap();
    let Some(mut s) = setup(test, &["--image-store", store_arg]) else {
        return;
    };
    let d = &s.daemon;
    let l = dir.path().join("layout");
    layout(
        &l,
        &[tar_of(&[
            Entry::Dir("bin"),
            Entry::Executable("bin/sh", &busybox),
            Entry::Symlink("bin/echo", "sh"),
        ])],
        true,
        json!({ "Cmd": ["/bin/echo", "from the image"], "Env": ["PATH=/bin"] }),
    );
    let import = |name: &str| {
        let (rc, _, err) = image(
            &store,
            &["import", "-q", l.to_str().unwrap(), "--name", name],
        );
        assert_eq!(rc, 0, "{err}");
    };
    import("docker.io/library/app:2");
    import("library/other:5");
    import("docker.io/other:5");
    for short in [
        "app:2",
        "library/app:2",
        "docker.io/app:2",
        "docker.io/library/app:2",
    ] {
        let out = alcove(&["run", "--image", short, "--image-store", store_arg]);
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "from the image\n",
            "{short}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let (rc, _, err) = image(&store, &["inspect", "other:5"]);
    assert_eq!(rc, 125);
    assert!(
        err.contains("\"other:5\" could be any of docker.io/other:5, library/other:5"),
        "{err}"
    );
    let (rc, _, err) = image(&store, &["inspect", "app"]);
    assert!(
        rc == 125 && err.contains("no image named \"app\""),
        "app means app:latest: {err}"
    );

    // Only app:2 is left to hold the layer, so that prune would remove it.
    for name in ["library/other:5", "docker.io/other:5"] {
        assert_eq!(image(&store, &["rm", name]).0, 0);
    }
    let (rc, _, err) = d.cli(&["deploy", "pinned", "--image", "app:2"]);
    assert_eq!(rc, 0, "{err}");
    let (rc, _, err) = image(&store, &["rm", "app:2"]);
    assert_eq!(rc, 125);
    assert!(
        err.contains("docker.io/library/app:2 is pinned by function pinned"),
        "{err}"
    );
    let (rc, _, err) = image(&store, &["rm", "--force", "app:2"]);
    assert_eq!(rc, 0, "{err}");
    let (rc, out, err) = image(&store, &["prune"]);
    assert_eq!(rc, 0, "{err}");
    assert!(out.contains("removed 0 layer(s)"), "{out}");
    assert!(
        out.contains("kept the layers of docker.io/library/app:2 (")
            && out.contains(") for function pinned"),
        "{out}"
    );
    let (rc, out, err) = d.cli(&["invoke", "pinned"]);
    assert_eq!(
        (rc, out.as_str()),
        (0, "from the image\n"),
        "still runs: {err}"
    );
    // Removing the function unpins: the layer goes at the next prune.
    let (rc, _, err) = d.cli(&["rm", "pinned"]);
    assert_eq!(rc, 0, "{err}");
    assert_eq!(
        std::fs::read_dir(store.join("pins")).unwrap().count(),
        0,
        "unpinned"
    );
    let (rc, out, err) = image(&store, &["prune"]);
    assert_eq!(rc, 0, "{err}");
    assert!(
        out.contains("removed 1 layer(s)") && !out.contains("kept the layers"),
        "{out}"
    );

    // A pin left for a function that is gone (a crash between removing it
    // and unpinning) goes when the daemon starts; another daemon's stay.
    use std::os::unix::ffi::OsStrExt;
    let data = std::fs::canonicalize(&s.daemon.data).unwrap();
    let ours = &common::oci::sha256_hex(data.as_os_str().as_bytes())[..12];
    let pins = store.join("pins");
    std::fs::create_dir_all(pins.join(format!("{ours}-ghost"))).unwrap();
    std::fs::create_dir_all(pins.join("000000000000-other")).unwrap();
    s.daemon.kill9();
    let _again = common::daemon::Daemon::start(&data, &["--image-store", store_arg]);
    let left: Vec<String> = std::fs::read_dir(&pins)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(left, ["000000000000-other"]);
}

#[test]
fn accel_gpu_is_refused_at_deploy_without_a_gpu() {
    let test = "accel_gpu_is_refused_at_deploy_without_a_gpu";
    let gpu = std::fs::read_dir("/dev")
        .unwrap()
        .flatten()
        .any(|e| e.file_name().to_string_lossy().starts_with("nvidia"));
    if gpu {
        skip_machine(test, "this machine has NVIDIA devices");
        return;
    }
    let Some(s) = setup(test, &[]) else { return };
    let d = &s.daemon;
    let (rc, _, err) = d.cli(&["deploy", "g", "--handler", "true", "--accel", "gpu"]);
    assert_eq!(rc, 125, "{err}");
    assert!(
        err.contains("accel \"gpu\": this machine has no GPU") && err.contains("--accel auto"),
        "{err}"
    );
    assert_ne!(d.cli(&["show", "g"]).0, 0, "nothing deployed");
    let (rc, _, err) = d.cli(&["deploy", "g", "--handler", "true", "--accel", "auto"]);
    assert_eq!(rc, 0, "auto deploys: {err}");
}
