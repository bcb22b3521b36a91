//! Hostile function code and a hostile host /etc: archives sent straight to
//! `POST /v1/functions` that clash, overflow names or collide in the code's
//! digest, link chains that leave /fn inside the sandbox, and host files
//! under the host view's allow-list that not everyone may read.

mod common;
use base64::Engine as _;
use common::daemon::{setup, Daemon, Reply};
use common::oci::{layout, tar_of, Entry};
use common::*;
use serde_json::json;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::process::{Command, Stdio};

enum E<'a> {
    File(&'a [u8], &'a [u8]),
    Dir(&'a str),
    Link(&'a [u8], &'a str),
}

/// A tar built by tar-rs (GNU long names and long link targets as needed;
/// names as raw bytes).
fn tar(entries: &[E]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = tar::Header::new_gnu();
        h.set_mtime(1_700_000_000);
        match e {
            E::File(name, data) => {
                h.set_mode(0o644);
                h.set_size(data.len() as u64);
                b.append_data(&mut h, OsStr::from_bytes(name), *data)
                    .unwrap();
            }
            E::Dir(name) => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(0o755);
                h.set_size(0);
                b.append_data(&mut h, name, &[][..]).unwrap();
            }
            E::Link(name, to) => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_mode(0o777);
                h.set_size(0);
                b.append_link(&mut h, OsStr::from_bytes(name), to).unwrap();
            }
        }
    }
    b.into_inner().unwrap()
}

fn deploy(d: &Daemon, name: &str, handler: &[&str], code: &[u8]) -> Reply {
    let body = json!({
        "name": name,
        "handler": handler,
        "code": base64::engine::general_purpose::STANDARD.encode(code),
    });
    d.http("POST", "/v1/functions", body.to_string().as_bytes())
}

#[test]
fn clashing_and_overlong_entries_are_invalid_code_naming_the_entry() {
    let Some(s) = setup(
        "clashing_and_overlong_entries_are_invalid_code_naming_the_entry",
        &[],
    ) else {
        return;
    };
    let d = &s.daemon;
    let long_target = "t".repeat(4096);
    let deep = vec!["d"; 3000].join("/");
    let cases: Vec<(Vec<E>, &str)> = vec![
        (vec![E::File(b"a", b"1"), E::File(b"a", b"2")], "a: "),
        (vec![E::Dir("a"), E::Link(b"a", "b")], "a: "),
        (vec![E::File(b"a", b"1"), E::File(b"a/b", b"2")], "a/b: "),
        (vec![E::Link(b"a", &long_target)], "a: "),
        (vec![E::File(deep.as_bytes(), b"x")], "d/d/d/d"),
    ];
    for (entries, expect) in cases {
        let reply = deploy(d, "clash", &["true"], &tar(&entries));
        assert_eq!(reply.status, 400, "{}", reply.text());
        assert_eq!(reply.code(), "invalid_code", "{}", reply.text());
        assert!(reply.text().contains(expect), "{}", reply.text());
    }
    assert_eq!(
        std::fs::read_dir(d.data.join("tmp")).map_or(0, |r| r.count()),
        0,
        "no staging left"
    );
    assert_eq!(d.http("GET", "/v1/functions/clash", b"").status, 404);
    assert_eq!(d.http("GET", "/healthz", b"").status, 200);
}

#[test]
fn trees_that_differ_only_in_their_names_bytes_never_share_a_digest() {
    let Some(s) = setup(
        "trees_that_differ_only_in_their_names_bytes_never_share_a_digest",
        &[],
    ) else {
        return;
    };
    let d = &s.daemon;
    let digest_of = |name: &str, entries: &[E]| {
        let reply = deploy(d, name, &["true"], &tar(entries));
        assert_eq!(reply.status, 201, "{}", reply.text());
        reply.json()["code_digest"].as_str().unwrap().to_owned()
    };
    // Names that are not UTF-8 (shown alike, lossily), and a space that
    // moves between a link's name and its target.
    let pairs: [(Vec<E>, Vec<E>); 3] = [
        (
            vec![E::File(b"main\xff.py", b"print(1)")],
            vec![E::File(b"main\xfe.py", b"print(1)")],
        ),
        (vec![E::Link(b"a b", "c")], vec![E::Link(b"a", "b c")]),
        (
            vec![E::File(b"x\nd y", b"1")],
            vec![E::File(b"x", b"1"), E::Dir("y")],
        ),
    ];
    let mut seconds = Vec::new();
    for (i, (one, two)) in pairs.iter().enumerate() {
        let a = digest_of(&format!("one-{i}"), one);
        let b = digest_of(&format!("two-{i}"), two);
        assert_ne!(a, b, "pair {i}: two trees, one stored code");
        seconds.push(b);
    }
    // What function two-0 runs is the tree it sent.
    let code = d.data.join("code").join(&seconds[0]);
    let names: Vec<Vec<u8>> = std::fs::read_dir(code)
        .unwrap()
        .map(|e| e.unwrap().file_name().as_bytes().to_vec())
        .collect();
    assert_eq!(names, vec![b"main\xfe.py".to_vec()]);
}

#[test]
fn a_link_chain_leaving_fn_in_two_hops_reaches_only_the_sandboxs_own_view() {
    let Some(s) = setup(
        "a_link_chain_leaving_fn_in_two_hops_reaches_only_the_sandboxs_own_view",
        &[],
    ) else {
        return;
    };
    let d = &s.daemon;
    // Each link stays inside by its text; followed, up -> /fn and esc -> /fn/../etc/shadow.
    let code = tar(&[
        E::Dir("x"),
        E::Dir("x/y"),
        E::Link(b"x/y/up", "../.."),
        E::Link(b"esc", "x/y/up/../etc/shadow"),
        E::Link(b"pw", "x/y/up/../proc/1/root/etc/passwd"),
    ]);
    let reply = deploy(
        d,
        "chain",
        &[
            "sh",
            "-c",
            "readlink -f /fn/esc; cat /fn/esc 2>&1; cat /fn/pw",
        ],
        &code,
    );
    assert_eq!(reply.status, 201, "{}", reply.text());
    let (rc, out, err) = d.cli(&["invoke", "chain"]);
    assert_eq!(rc, 0, "{err}");
    assert!(
        out.starts_with("/etc/shadow\n"),
        "the chain was followed: {out}"
    );
    assert!(
        out.contains("No such file"),
        "no shadow in the sandbox: {out}"
    );
    assert!(
        out.contains("nobody:x:65534"),
        "the sandbox's generated passwd: {out}"
    );
    let host_shadow = std::fs::read_to_string("/etc/shadow").unwrap_or_default();
    if let Some(root) = host_shadow.lines().find(|l| l.starts_with("root:")) {
        assert!(!out.contains(root), "the host's shadow: {out}");
    }
}

/// Runs `script` in a private mount namespace (the host's /etc is never
/// changed: a copy of a piece is bound over it there only).
fn in_private_mounts(script: &str) -> (i32, String, String) {
    let out = Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c", script])
        .env("ALCOVE", ALCOVE)
        .stdin(Stdio::null())
        .output()
        .expect("unshare (util-linux)");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_host_file_not_everyone_may_read_stays_out_of_the_host_view_even_for_uid_0() {
    let test = "a_host_file_not_everyone_may_read_stays_out_of_the_host_view_even_for_uid_0";
    if !root_or_skip(test) {
        return;
    }
    if !Path::new("/etc/python3").is_dir() {
        skip_unprovided(test, "needs the host's /etc/python3 (Debian's python3)");
        return;
    }
    let _g = serial();
    let copy = tempfile::tempdir().unwrap();
    let c = copy.path().display();
    // python3/ is a small piece (copied into /etc), ssl/certs a bound one.
    let (rc, out, err) = in_private_mounts(&format!(
        "set -e
         cp -a /etc/python3/. {c}/
         echo TOPSECRET > {c}/secret.conf && chmod 600 {c}/secret.conf
         echo OPEN > {c}/open.conf && chmod 644 {c}/open.conf
         mount --bind {c} /etc/python3
         \"$ALCOVE\" run --user 0 -- sh -c 'cat /etc/python3/open.conf; cat /etc/python3/secret.conf 2>&1; true'"
    ));
    assert_eq!(rc, 0, "{err}");
    assert!(out.contains("OPEN"), "the piece is shown: {out}");
    assert!(!out.contains("TOPSECRET"), "a 0600 host file: {out}");
}

fn pinned_keys(store: &Path) -> Vec<String> {
    std::fs::read_dir(store.join("pins")).map_or(Vec::new(), |r| {
        r.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect()
    })
}

#[test]
fn a_failed_first_deploy_pins_nothing_and_a_removal_never_unpins_a_deploy_in_flight() {
    let test = "a_failed_first_deploy_pins_nothing_and_a_removal_never_unpins_a_deploy_in_flight";
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let Some(s) = setup(test, &["--image-store", store.to_str().unwrap()]) else {
        return;
    };
    let d = &s.daemon;
    let l = dir.path().join("layout");
    layout(&l, &[tar_of(&[Entry::File("x", b"x")])], true, json!({}));
    let (rc, _, err) = image(
        &store,
        &["import", "-q", l.to_str().unwrap(), "--name", "app:2"],
    );
    assert_eq!(rc, 0, "{err}");
    let with_image = |name: &str, code: &[u8]| {
        let body = json!({
            "name": name,
            "handler": ["true"],
            "image": "app:2",
            "code": base64::engine::general_purpose::STANDARD.encode(code),
        });
        d.http("POST", "/v1/functions", body.to_string().as_bytes())
    };
    // Refused code after the image was found: no function "ghost" holds it.
    let reply = with_image("ghost", b"not a tar at all, clearly");
    assert_eq!(reply.status, 400, "{}", reply.text());
    assert_eq!(d.http("GET", "/v1/functions/ghost", b"").status, 404);
    assert_eq!(pinned_keys(&store), Vec::<String>::new());
    let (rc, _, err) = image(&store, &["rm", "app:2"]);
    assert_eq!(rc, 0, "nothing runs it: {err}");
    let (rc, _, err) = image(
        &store,
        &["import", "-q", l.to_str().unwrap(), "--name", "app:2"],
    );
    assert_eq!(rc, 0, "{err}");

    // A first deploy whose code takes a while to store, while another
    // function is removed: its pin is there once it is deployed.
    let reply = deploy(d, "other", &["true"], &tar(&[E::File(b"a", b"1")]));
    assert_eq!(reply.status, 201, "{}", reply.text());
    let big = vec![7u8; 40 << 20];
    let code = tar(&[E::File(b"big.bin", &big)]);
    std::thread::scope(|scope| {
        let slow = scope.spawn(|| with_image("slow", &code));
        // Once its image is pinned, while its code is being stored.
        wait_until("slow's pin", std::time::Duration::from_secs(30), || {
            pinned_keys(&store).iter().any(|k| k.ends_with("-slow"))
        });
        assert!(
            !slow.is_finished(),
            "the removal must come during the deploy"
        );
        assert_eq!(d.http("DELETE", "/v1/functions/other", b"").status / 100, 2);
        let reply = slow.join().unwrap();
        assert_eq!(reply.status, 201, "{}", reply.text());
    });
    assert_eq!(pinned_keys(&store).len(), 1, "slow's pin");
    let (rc, _, err) = image(&store, &["rm", "app:2"]);
    assert_ne!(rc, 0, "slow runs it");
    assert!(err.contains("pinned by function slow"), "{err}");
}

#[test]
fn a_file_with_holes_deploys_and_a_directory_too_big_to_send_is_refused_before_packing_it() {
    let Some(s) = setup(
        "a_file_with_holes_deploys_and_a_directory_too_big_to_send_is_refused_before_packing_it",
        &[],
    ) else {
        return;
    };
    let d = &s.daemon;
    let code = s.dir.path().join("code");
    std::fs::create_dir_all(&code).unwrap();
    std::fs::write(code.join("main.sh"), "wc -c < /fn/holes.bin\n").unwrap();
    // All hole: tar-rs would pack it as a GNU sparse entry, which the daemon refuses.
    let holes = std::fs::File::create(code.join("holes.bin")).unwrap();
    holes.set_len(1 << 20).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert!(
        std::fs::metadata(code.join("holes.bin")).unwrap().blocks() < 8,
        "the file has holes"
    );
    let code_dir = code.to_str().unwrap();
    let (rc, _, err) = d.cli(&[
        "deploy",
        "holes",
        "--handler",
        "sh /fn/main.sh",
        "--code",
        code_dir,
    ]);
    assert_eq!(rc, 0, "{err}");
    let (rc, out, err) = d.cli(&["invoke", "holes"]);
    assert_eq!((rc, out.trim()), (0, "1048576"), "{err}");

    // 4 GiB, all holes: refused by its size, without reading it.
    holes.set_len(4 << 30).unwrap();
    let started = std::time::Instant::now();
    let (rc, _, err) = d.cli(&["deploy", "holes", "--handler", "true", "--code", code_dir]);
    assert_ne!(rc, 0);
    assert!(err.contains("the most a deploy carries"), "{err}");
    assert!(err.contains("holes.bin"), "{err}");
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
}
