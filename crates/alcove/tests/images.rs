//! Images end to end: real images made here by umoci and skopeo (OCI
//! layout, oci-archive, docker-archive, zstd), imported and run; hand-made
//! malicious archives refused with nothing left behind; whiteouts; layer
//! sharing; prune against a running sandbox.

mod common;
use common::oci::{gzip, layout, tar_of, Entry};
use common::*;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Command;

fn image_json(store: &Path, args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.push("--json");
    let (code, out, err) = image(store, &all);
    assert_eq!(code, 0, "alcove image {args:?}: {err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?} printed no JSON ({e}): {out}"))
}

fn run_image(store: &Path, name: &str, program: &[&str]) -> (i32, String, String) {
    let mut cmd = Command::new(ALCOVE);
    cmd.args(["run", "--image", name, "--image-store"])
        .arg(store);
    if !program.is_empty() {
        cmd.arg("--").args(program);
    }
    let out = cmd.output().expect("run alcove run");
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (
        out.status.code().unwrap_or(-1),
        text(&out.stdout),
        text(&out.stderr),
    )
}

fn sh(script: &str) {
    let out = Command::new("sh").arg("-ec").arg(script).output().unwrap();
    assert!(
        out.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn tools_or_skip(test: &str) -> bool {
    if !root_or_skip(test) {
        return false;
    }
    for tool in ["umoci", "skopeo"] {
        if Command::new(tool).arg("--version").output().is_err() {
            skip_unprovided(
                test,
                &format!("{tool} is not installed (scripts/test.sh installs it)"),
            );
            return false;
        }
    }
    true
}

/// Entries under a directory (recursively), for "nothing left behind".
fn count_entries(dir: &Path) -> usize {
    std::fs::read_dir(dir).map_or(0, |d| {
        d.flatten()
            .map(|e| {
                1 + if e.file_type().unwrap().is_dir() {
                    count_entries(&e.path())
                } else {
                    0
                }
            })
            .sum()
    })
}

/// An OCI layout made by umoci: `base` (busybox and an /etc/passwd with
/// `app`), and `app` on top of it (adds /etc/motd, deletes /bin/ls, and sets
/// entrypoint, cmd, env, user, working dir, a label and a port).
fn umoci_layout(dir: &Path) -> PathBuf {
    let l = dir.join("oci");
    let b = dir.join("bundle");
    sh(&format!(
        "umoci init --layout {l}
        umoci new --image {l}:base
        umoci unpack --image {l}:base {b} >/dev/null
        mkdir -p {b}/rootfs/bin {b}/rootfs/etc
        cp /bin/busybox {b}/rootfs/bin/busybox
        for c in sh ls cat echo id pwd sleep; do ln -s busybox {b}/rootfs/bin/$c; done
        printf 'root:x:0:0::/:/bin/sh\\napp:x:1000:1000::/:/bin/sh\\n' > {b}/rootfs/etc/passwd
        umoci repack --image {l}:base {b}
        rm -rf {b}
        umoci unpack --image {l}:base {b} >/dev/null
        echo hello > {b}/rootfs/etc/motd
        rm {b}/rootfs/bin/ls
        umoci repack --image {l}:app {b}
        umoci config --image {l}:app --config.entrypoint /bin/sh --config.cmd -c \
            --config.cmd 'cat /etc/motd; id -u; pwd; echo $GREETING; test -e /bin/ls || echo no-ls' \
            --config.env GREETING=hi --config.user app --config.workingdir /etc \
            --config.label team=alcove --config.exposedports 8080/tcp",
        l = l.display(),
        b = b.display()
    ));
    l
}

#[test]
fn real_images_in_every_format_import_share_layers_and_run_as_configured() {
    if !tools_or_skip("real_images_in_every_format_import_share_layers_and_run_as_configured") {
        return;
    }
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let l = umoci_layout(dir.path());
    let layout_path = l.to_str().unwrap();

    let (code, _, err) = image(&store, &["import", layout_path]);
    assert_eq!(code, 125);
    assert!(err.contains("pick one with --ref"), "{err}");

    let base = image_json(&store, &["import", layout_path, "--ref", "base"]);
    assert_eq!(
        (base["name"].clone(), base["layers_unpacked"].clone()),
        (json!("oci:base"), json!(1))
    );
    let app = image_json(
        &store,
        &["import", layout_path, "--ref", "app", "--name", "app:1"],
    );
    assert_eq!(
        (
            app["layers"].clone(),
            app["layers_unpacked"].clone(),
            app["layers_reused"].clone()
        ),
        (json!(2), json!(1), json!(1))
    );

    // The base layer is stored once, and listed as shared by both images.
    let listed = image_json(&store, &["ls"]);
    let find = |name: &str| {
        listed
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["name"] == name)
            .cloned()
            .unwrap()
    };
    assert_eq!(find("app:1")["shared"], find("oci:base")["size"]);
    assert!(find("oci:base")["size"].as_u64().unwrap() > 1_000_000);
    assert_eq!(std::fs::read_dir(store.join("layers")).unwrap().count(), 2);

    // The config is honoured: entrypoint+cmd, env, user, working dir; the
    // deleted /bin/ls (a whiteout) is gone in app and present in base.
    let (code, out, err) = run_image(&store, "app:1", &[]);
    assert_eq!(
        (code, out.as_str()),
        (0, "hello\n1000\n/etc\nhi\nno-ls\n"),
        "{err}"
    );
    let (code, out, _) = run_image(
        &store,
        "oci:base",
        &["/bin/sh", "-c", "test -e /bin/ls && echo has-ls; id -u"],
    );
    assert_eq!((code, out.as_str()), (0, "has-ls\n65534\n"));
    let (_, out, _) = run_image(&store, "app:1", &["/bin/sh", "-c", "echo $GREETING-$EXTRA"]);
    assert_eq!(out, "hi-\n");
    let inspect = image_json(&store, &["inspect", "app:1"]);
    assert_eq!(inspect["config"]["labels"], json!({ "team": "alcove" }));
    assert_eq!(inspect["config"]["exposed_ports"], json!(["8080/tcp"]));

    // The same image as an oci-archive and as a docker-archive: nothing new to unpack.
    let archive = dir.path().join("app-oci.tar");
    sh(&format!("tar -C {layout_path} -cf {} .", archive.display()));
    let again = image_json(
        &store,
        &[
            "import",
            archive.to_str().unwrap(),
            "--ref",
            "app",
            "--name",
            "app:2",
        ],
    );
    assert_eq!(
        (again["layers_unpacked"].clone(), again["id"].clone()),
        (json!(0), app["id"].clone())
    );
    let docker = dir.path().join("app-docker.tar");
    sh(&format!(
        "skopeo copy --quiet oci:{layout_path}:app docker-archive:{}:app:3",
        docker.display()
    ));
    let from_docker = image_json(&store, &["import", docker.to_str().unwrap()]);
    assert_eq!(
        (
            from_docker["layers_unpacked"].clone(),
            from_docker["id"].clone()
        ),
        (json!(0), app["id"].clone())
    );
    assert_eq!(from_docker["name"], "docker.io/library/app:3");

    // Importing the same image again changes nothing.
    let index_before = std::fs::read(store.join("index.json")).unwrap();
    let same = image_json(
        &store,
        &["import", layout_path, "--ref", "app", "--name", "app:1"],
    );
    assert_eq!(same["layers_unpacked"], 0);
    assert_eq!(
        std::fs::read(store.join("index.json")).unwrap(),
        index_before
    );

    // zstd layers (skopeo recompresses), into a fresh store so they are unpacked.
    let zstd_layout = dir.path().join("zstd");
    sh(&format!(
        "skopeo copy --quiet --dest-compress --dest-compress-format zstd oci:{layout_path}:app oci:{}:app",
        zstd_layout.display()
    ));
    let store2 = dir.path().join("store2");
    let z = image_json(&store2, &["import", zstd_layout.to_str().unwrap()]);
    assert_eq!(
        (z["layers_unpacked"].clone(), z["id"].clone()),
        (json!(2), app["id"].clone())
    );
    let (code, out, _) = run_image(&store2, z["name"].as_str().unwrap(), &[]);
    assert_eq!((code, out.as_str()), (0, "hello\n1000\n/etc\nhi\nno-ls\n"));
}

/// Imports `layout` into a fresh store and expects it refused with `expect` in the message.
fn refused(dir: &Path, case: &str, layout_dir: &Path, extra: &[&str], expect: &str) {
    let store = dir.join(format!("store-{case}"));
    let mut args = vec!["import", layout_dir.to_str().unwrap(), "--name", "bad:1"];
    args.extend_from_slice(extra);
    let (code, _, err) = image(&store, &args);
    assert_eq!(code, 125, "{case}: {err}");
    assert!(
        err.contains(expect),
        "{case}: expected {expect:?} in: {err}"
    );
    assert_eq!(
        count_entries(&store.join("layers")),
        0,
        "{case}: a layer was left"
    );
    assert_eq!(
        count_entries(&store.join("tmp")),
        0,
        "{case}: staging was left"
    );
    assert_eq!(
        count_entries(&store.join("leases")),
        0,
        "{case}: lease files were left"
    );
    let (_, out, _) = image(&store, &["ls"]);
    assert!(!out.contains("bad:1"), "{case}: the image was recorded");
}

#[test]
fn malicious_archives_are_refused_and_leave_nothing_behind() {
    if !root_or_skip("malicious_archives_are_refused_and_leave_nothing_behind") {
        return;
    }
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let outside = dir.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    let outside_str = outside.to_str().unwrap();
    let make = |case: &str, entries: &[Entry]| {
        let l = dir.path().join(case);
        layout(&l, &[tar_of(entries)], true, json!({}));
        l
    };
    let cases: Vec<(&str, PathBuf, &str)> = vec![
        (
            "traversal",
            make("traversal", &[Entry::File("../../escaped", b"x")]),
            "a '..' component",
        ),
        (
            "absolute",
            make("absolute", &[Entry::File("/etc/escaped", b"x")]),
            "an absolute path",
        ),
        (
            "symlink-escape",
            make(
                "symlink-escape",
                &[
                    Entry::Symlink("link", outside_str),
                    Entry::File("link/pwned", b"x"),
                ],
            ),
            "goes through a symbolic link",
        ),
        (
            "hardlink-escape",
            make(
                "hardlink-escape",
                &[Entry::HardLink("h", "../../../etc/passwd")],
            ),
            "a '..' component",
        ),
        (
            "hardlink-absolute",
            make("hardlink-absolute", &[Entry::HardLink("h", "/etc/passwd")]),
            "an absolute path",
        ),
    ];
    for (case, l, expect) in &cases {
        refused(dir.path(), case, l, &[], expect);
    }
    assert_eq!(count_entries(&outside), 0, "nothing was written outside");
    assert!(!dir.path().join("escaped").exists());

    // A layer blob altered after its digest was taken.
    let l = dir.path().join("digest");
    let blobs = layout(
        &l,
        &[tar_of(&[Entry::File("a", b"hello")])],
        true,
        json!({}),
    );
    let blob = l.join("blobs/sha256").join(&blobs[0]);
    std::fs::write(&blob, gzip(&tar_of(&[Entry::File("a", b"HELLO")]))).unwrap();
    refused(dir.path(), "digest", &l, &[], "does not match its digest");

    // A truncated gzip stream (its descriptor and digest describe the truncated bytes).
    let l = dir.path().join("truncated");
    let whole = gzip(&tar_of(&[Entry::File("a", &vec![7u8; 1 << 20])]));
    std::fs::create_dir_all(&l).unwrap();
    let cut = whole[..whole.len() / 2].to_vec();
    // Rebuild the layout around the cut blob: diff_ids of the full tar, blob of the cut one.
    layout(
        &l,
        &[tar_of(&[Entry::File("a", &vec![7u8; 1 << 20])])],
        true,
        json!({}),
    );
    let name = std::fs::read_dir(l.join("blobs/sha256"))
        .unwrap()
        .flatten()
        .find(|e| std::fs::read(e.path()).unwrap() == whole)
        .unwrap()
        .path();
    std::fs::remove_file(&name).unwrap();
    let cut_hex = common::oci::sha256_hex(&cut);
    std::fs::write(l.join("blobs/sha256").join(&cut_hex), &cut).unwrap();
    let full_hex = name.file_name().unwrap().to_str().unwrap().to_owned();
    for meta in std::fs::read_dir(l.join("blobs/sha256")).unwrap().flatten() {
        let text = std::fs::read_to_string(meta.path()).unwrap_or_default();
        if text.contains(&full_hex) {
            let fixed = text.replace(&full_hex, &cut_hex).replace(
                &format!("\"size\":{}", whole.len()),
                &format!("\"size\":{}", cut.len()),
            );
            let new_hex = common::oci::sha256_hex(fixed.as_bytes());
            std::fs::remove_file(meta.path()).unwrap();
            std::fs::write(l.join("blobs/sha256").join(&new_hex), &fixed).unwrap();
            let index = std::fs::read_to_string(l.join("index.json")).unwrap();
            let old_hex = meta.file_name().to_string_lossy().into_owned();
            let index = index.replace(&old_hex, &new_hex).replace(
                &format!("\"size\":{}", text.len()),
                &format!("\"size\":{}", fixed.len()),
            );
            std::fs::write(l.join("index.json"), index).unwrap();
        }
    }
    refused(
        dir.path(),
        "truncated",
        &l,
        &[],
        "incomplete deflate stream",
    );

    // A decompression bomb: 200 MB of zeros, a few hundred KB gzipped, against a 64M limit.
    let l = dir.path().join("bomb");
    layout(
        &l,
        &[tar_of(&[Entry::File("zeros", &vec![0u8; 200 << 20])])],
        true,
        json!({}),
    );
    let blob_bytes: u64 = std::fs::read_dir(l.join("blobs/sha256"))
        .unwrap()
        .flatten()
        .map(|e| e.metadata().unwrap().len())
        .sum();
    assert!(
        blob_bytes < 2 << 20,
        "the bomb is small on disk: {blob_bytes}"
    );
    refused(
        dir.path(),
        "bomb",
        &l,
        &["--max-size", "64M"],
        "more than 67108864 bytes",
    );
    let l = dir.path().join("many");
    let names: Vec<String> = (0..200).map(|i| format!("f{i}")).collect();
    let entries: Vec<Entry> = names.iter().map(|n| Entry::File(n, b"")).collect();
    layout(&l, &[tar_of(&entries)], true, json!({}));
    refused(
        dir.path(),
        "many",
        &l,
        &["--max-files", "100"],
        "more than 100 entries",
    );
}

#[test]
fn whiteouts_opaque_dirs_and_device_nodes() {
    if !root_or_skip("whiteouts_opaque_dirs_and_device_nodes") {
        return;
    }
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let busybox = std::fs::read("/bin/busybox").unwrap();
    let lower = tar_of(&[
        Entry::Dir("bin"),
        Entry::Executable("bin/sh", &busybox),
        Entry::Dir("d"),
        Entry::File("d/a", b"a"),
        Entry::File("d/b", b"b"),
        Entry::Dir("e"),
        Entry::File("e/keep", b"k"),
        Entry::HardLink("e/keep2", "e/keep"),
        Entry::File("e/gone", b"g"),
        Entry::CharDevice("evil-mem", 1, 1),
    ]);
    let upper = tar_of(&[
        Entry::Dir("d"),
        Entry::File("d/.wh..wh..opq", b""),
        Entry::File("d/c", b"c"),
        Entry::File("e/.wh.gone", b""),
    ]);
    let l = dir.path().join("layout");
    layout(
        &l,
        &[lower, upper],
        true,
        json!({ "Cmd": ["/bin/sh", "-c", "echo d: $(/bin/sh -c 'cd /d && echo *'); echo e: $(cd /e && echo *); test -e /evil-mem && echo DEVICE || echo no-device"] }),
    );
    let imported = image_json(&store, &["import", l.to_str().unwrap(), "--name", "wh"]);
    assert_eq!(imported["skipped_devices"], 1);
    let (code, out, err) = run_image(&store, "wh", &[]);
    assert_eq!(
        (code, out.as_str()),
        (0, "d: c\ne: keep keep2\nno-device\n"),
        "{err}"
    );
}

#[test]
fn prune_removes_unused_layers_but_never_one_a_sandbox_uses() {
    if !root_or_skip("prune_removes_unused_layers_but_never_one_a_sandbox_uses") {
        return;
    }
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let busybox = std::fs::read("/bin/busybox").unwrap();
    let l = dir.path().join("layout");
    layout(
        &l,
        &[tar_of(&[
            Entry::Dir("bin"),
            Entry::Executable("bin/sh", &busybox),
            Entry::Symlink("bin/sleep", "sh"),
        ])],
        true,
        json!({}),
    );
    image_json(&store, &["import", l.to_str().unwrap(), "--name", "p"]);
    let mut running = Command::new(ALCOVE)
        .args(["run", "--image", "p", "--image-store"])
        .arg(&store)
        .args(["--", "/bin/sleep", "3.25"])
        .spawn()
        .unwrap();
    wait_until(
        "the sandbox runs",
        std::time::Duration::from_secs(10),
        || !processes_with("/bin/sleep 3.25").is_empty(),
    );
    image_json(&store, &["rm", "p"]);
    let report = image_json(&store, &["prune"]);
    assert_eq!(
        (report["removed_layers"].clone(), report["in_use"].clone()),
        (json!(0), json!(1))
    );
    assert_eq!(
        std::fs::read_dir(store.join("layers")).unwrap().count(),
        1,
        "the layer in use stays"
    );
    assert!(
        running.wait().unwrap().success(),
        "the sandbox ran to its end"
    );
    let report = image_json(&store, &["prune"]);
    assert_eq!(
        (report["removed_layers"].clone(), report["in_use"].clone()),
        (json!(1), json!(0))
    );
    assert_eq!(count_entries(&store.join("layers")), 0);
}

#[test]
fn functions_run_in_images() {
    if !root_or_skip("functions_run_in_images") {
        return;
    }
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let busybox = std::fs::read("/bin/busybox").unwrap();
    let l = dir.path().join("layout");
    let layers = [
        tar_of(&[
            Entry::Dir("bin"),
            Entry::Executable("bin/sh", &busybox),
            Entry::Symlink("bin/cat", "sh"),
        ]),
        tar_of(&[
            Entry::Dir("etc"),
            Entry::File("etc/greeting", b"from the image"),
        ]),
    ];
    layout(
        &l,
        &layers,
        true,
        json!({ "Cmd": ["/bin/sh", "-c", "cat /etc/greeting; echo \" and $(cat)\""], "Env": ["PATH=/bin"] }),
    );
    image_json(
        &store,
        &["import", l.to_str().unwrap(), "--name", "fnimg:1"],
    );
    let d = common::daemon::Daemon::start(
        &dir.path().join("data"),
        &["--image-store", store.to_str().unwrap()],
    );

    // No handler: the image's command runs, the body on its stdin.
    let (code, out, err) = d.cli(&["deploy", "viaimage", "--image", "fnimg:1"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("deployed viaimage version 1"), "{out}");
    let (code, out, err) = d.cli(&["invoke", "viaimage", "--data", "the body"]);
    assert_eq!(
        (code, out.as_str()),
        (0, "from the image and the body\n"),
        "{err}"
    );

    // A handler and code on top of the image.
    let code_dir = dir.path().join("code");
    std::fs::create_dir(&code_dir).unwrap();
    std::fs::write(
        code_dir.join("h.sh"),
        "echo code sees: $(cat /etc/greeting)\n",
    )
    .unwrap();
    let (code, _, err) = d.cli(&[
        "deploy",
        "withcode",
        "--image",
        "fnimg:1",
        "--handler",
        "sh /fn/h.sh",
        "--code",
        code_dir.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        d.cli(&["invoke", "withcode"]).1,
        "code sees: from the image\n"
    );

    // An unknown image is refused at deploy, clearly.
    let (code, _, err) = d.cli(&["deploy", "nope", "--image", "missing:1"]);
    assert_eq!(code, 125);
    assert!(
        err.contains("no image named") && err.contains("invalid_request"),
        "{err}"
    );

    // The functions pin their image: `image rm` refuses (code_and_host.rs
    // tests the rest). A version whose image is gone all the same (its pins
    // lost by hand here) fails as an invocation, with the reason.
    let (code, _, err) = image(&store, &["rm", "fnimg:1"]);
    assert!(
        code == 125
            && err.contains("pinned by function viaimage (")
            && err.contains(", function withcode ("),
        "{err}"
    );
    image_json(&store, &["rm", "--force", "fnimg:1"]);
    std::fs::remove_dir_all(store.join("pins")).unwrap();
    image_json(&store, &["prune"]);
    let (code, _, err) = d.cli(&["invoke", "viaimage"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("function_not_started") && err.contains("import it again"),
        "{err}"
    );
}
