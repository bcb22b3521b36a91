//! Hostile images, made here byte by byte: links out of the image at the
//! files alcove reads (/etc/passwd, /etc/group) and at the places it mounts
//! on (on the template path and on the from-scratch one), PAX records that
//! lie about a file's size or hide a NUL byte, and metadata entries big
//! enough to exhaust memory. Each is tried for real and must end harmlessly:
//! a clear error or a run confined to the image, nothing touched on the
//! host, no panic, no hang.

mod common;
use common::oci::layout;
use common::*;
use serde_json::{json, Value};
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A tar made entry by entry, including what real tools never write.
struct Tar(tar::Builder<Vec<u8>>);

impl Tar {
    fn new() -> Self {
        Tar(tar::Builder::new(Vec::new()))
    }

    fn entry(mut self, kind: tar::EntryType, name: &str, mode: u32, data: &[u8]) -> Self {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(kind);
        h.set_path(name).unwrap();
        h.set_mode(mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_700_000_000);
        h.set_size(data.len() as u64);
        h.set_cksum();
        self.0.append(&h, data).unwrap();
        self
    }

    fn dir(self, name: &str) -> Self {
        self.entry(tar::EntryType::Directory, name, 0o755, &[])
    }

    fn file(self, name: &str, data: &[u8]) -> Self {
        self.entry(tar::EntryType::Regular, name, 0o644, data)
    }

    fn fifo(self, name: &str) -> Self {
        self.entry(tar::EntryType::Fifo, name, 0o644, &[])
    }

    fn symlink(mut self, name: &str, target: &str) -> Self {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_path(name).unwrap();
        h.set_link_name(target).unwrap();
        h.set_mode(0o777);
        h.set_mtime(1_700_000_000);
        h.set_size(0);
        h.set_cksum();
        self.0.append(&h, &[][..]).unwrap();
        self
    }

    /// busybox as /bin/sh, with the applets the tests use.
    fn busybox(self) -> Self {
        let busybox = std::fs::read("/bin/busybox").expect("busybox (scripts/test.sh installs it)");
        let mut t =
            self.dir("bin")
                .dir("etc")
                .entry(tar::EntryType::Regular, "bin/sh", 0o755, &busybox);
        for applet in ["cat", "id", "pwd", "ls", "stat"] {
            t = t.symlink(&format!("bin/{applet}"), "sh");
        }
        t
    }

    /// A PAX extended header for the entry that follows.
    fn pax(mut self, records: &[(&str, &[u8])]) -> Self {
        self.0
            .append_pax_extensions(records.iter().map(|&(k, v)| (k, v)))
            .unwrap();
        self
    }

    /// A metadata entry (`L`: GNU long name, `x`: PAX) holding `data`.
    fn metadata(mut self, kind: u8, data: &[u8]) -> Self {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::new(kind));
        h.set_path("././@LongLink").unwrap();
        h.set_size(data.len() as u64);
        h.set_cksum();
        self.0.append(&h, data).unwrap();
        self
    }

    /// Bytes written as they are, past the last header.
    fn raw(mut self, bytes: &[u8]) -> Self {
        self.0.get_mut().extend_from_slice(bytes);
        self
    }

    fn finish(self) -> Vec<u8> {
        self.0.into_inner().unwrap()
    }
}

/// `alcove image --store STORE ARGS`: exit code and stderr.
fn image_err(store: &Path, args: &[&str]) -> (i32, String) {
    let (code, _, err) = common::image(store, args);
    (code, err)
}

/// Writes a layout of `layers` with `config` and imports it as `name`.
fn imported(dir: &Path, store: &Path, name: &str, layers: Vec<Vec<u8>>, config: Value) {
    let l = dir.join(format!("layout-{name}"));
    layout(&l, &layers, true, config);
    let (code, err) = image_err(store, &["import", l.to_str().unwrap(), "--name", name]);
    assert_eq!(code, 0, "importing {name}: {err}");
}

/// What one command did (see [`run_bounded`]).
struct Ended {
    code: i32,
    stdout: String,
    stderr: String,
    /// Peak resident memory, KiB.
    max_rss_kib: i64,
}

/// Runs `cmd`, or kills it if it still runs after two minutes (a hang).
// The child is reaped by wait4 (for its rusage), which clippy cannot see.
#[allow(clippy::zombie_processes)]
fn run_bounded(cmd: &mut Command) -> Result<Ended, String> {
    use std::os::unix::process::CommandExt;
    // With a pre_exec hook std forks rather than vforks: the child starts
    // from this process's current memory, not its peak, so the child's
    // peak is its own.
    // SAFETY: the hook does nothing, so it is async-signal-safe.
    unsafe { cmd.pre_exec(|| Ok(())) };
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let drain = |r: Option<Box<dyn std::io::Read + Send>>| {
        let mut r = r.unwrap();
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = r.read_to_end(&mut bytes);
            String::from_utf8_lossy(&bytes).into_owned()
        })
    };
    let stdout = drain(child.stdout.take().map(|r| Box::new(r) as _));
    let stderr = drain(child.stderr.take().map(|r| Box::new(r) as _));
    let start = Instant::now();
    let pid = child.id() as libc::pid_t;
    loop {
        let mut status = 0;
        // SAFETY: all-zero is a valid rusage.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: `pid` is our own child; both out-pointers are valid.
        let reaped = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut usage) };
        assert!(reaped >= 0, "wait4: {}", std::io::Error::last_os_error());
        if reaped == pid {
            let code = if libc::WIFEXITED(status) {
                libc::WEXITSTATUS(status)
            } else {
                128 + libc::WTERMSIG(status)
            };
            return Ok(Ended {
                code,
                stdout: stdout.join().unwrap(),
                stderr: stderr.join().unwrap(),
                max_rss_kib: usage.ru_maxrss,
            });
        }
        if start.elapsed() > Duration::from_secs(120) {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("{cmd:?} hung (killed after 120 s)"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn run_image(store: &Path, name: &str, extra: &[&str]) -> Result<Ended, String> {
    run_bounded(
        Command::new(ALCOVE)
            .args(["run", "--image", name, "--image-store"])
            .arg(store)
            .args(extra),
    )
}

#[test]
fn image_users_are_looked_up_inside_the_image_only() {
    if !root_or_skip("image_users_are_looked_up_inside_the_image_only") {
        return;
    }
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    // On the host: a FIFO nobody writes to, and a passwd naming `app` 4242.
    let host = tempfile::tempdir_in("/var/tmp").unwrap();
    let fifo = host.path().join("fifo");
    let status = Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(status.success());
    let host_passwd = host.path().join("passwd");
    std::fs::write(&host_passwd, "app:x:4242:4242::/:/bin/sh\n").unwrap();
    let config = json!({ "User": "app", "Cmd": ["/bin/sh", "-c", "id -u"] });
    let with_passwd = |passwd: Tar| vec![passwd.busybox().finish()];

    let mut huge = "# padding\n".repeat(200_000); // 2 MB
    huge.push_str("app:x:1000:1000::/:/bin/sh\n");
    let cases: Vec<(&str, Vec<Vec<u8>>, &str)> = vec![
        (
            "host-fifo",
            with_passwd(
                Tar::new()
                    .dir("etc")
                    .symlink("etc/passwd", fifo.to_str().unwrap()),
            ),
            "user \"app\" is not in its /etc/passwd",
        ),
        (
            "host-file",
            with_passwd(
                Tar::new()
                    .dir("etc")
                    .symlink("etc/passwd", host_passwd.to_str().unwrap()),
            ),
            "user \"app\" is not in its /etc/passwd",
        ),
        (
            "fifo-in-image",
            with_passwd(Tar::new().dir("etc").fifo("etc/passwd")),
            "its /etc/passwd is not a regular file",
        ),
        (
            "too-big",
            with_passwd(Tar::new().dir("etc").file("etc/passwd", huge.as_bytes())),
            "its /etc/passwd is larger than",
        ),
        (
            "whiteout",
            vec![
                Tar::new()
                    .busybox()
                    .file("etc/passwd", b"app:x:1000:1000::/:/bin/sh\n")
                    .finish(),
                Tar::new().dir("etc").file("etc/.wh.passwd", b"").finish(),
            ],
            "user \"app\" is not in its /etc/passwd",
        ),
        (
            "dev-zero",
            with_passwd(Tar::new().dir("etc").symlink("etc/passwd", "/dev/zero")),
            "user \"app\" is not in its /etc/passwd",
        ),
    ];
    for (case, layers, expect) in cases {
        imported(dir.path(), &store, case, layers, config.clone());
        let ended = run_image(&store, case, &[]).unwrap_or_else(|e| panic!("{case}: {e}"));
        assert_eq!(
            ended.code, 125,
            "{case}: ran ({}) {}",
            ended.stdout, ended.stderr
        );
        assert!(
            ended.stderr.contains(expect),
            "{case}: expected {expect:?} in {}",
            ended.stderr
        );
    }

    // A link inside the image is followed, inside the image (absolute
    // targets are taken from the image's root, not the host's).
    let layers = with_passwd(
        Tar::new()
            .dir("etc")
            .file("etc/passwd.real", b"app:x:1000:1000::/:/bin/sh\n")
            .symlink("etc/passwd", "/etc/passwd.real"),
    );
    imported(dir.path(), &store, "confined-link", layers, config.clone());
    let ended = run_image(&store, "confined-link", &[]).unwrap();
    assert_eq!(
        (ended.code, ended.stdout.as_str()),
        (0, "1000\n"),
        "{}",
        ended.stderr
    );
    let group = json!({ "User": "app:grp", "Cmd": ["/bin/sh", "-c", "id -g"] });
    let layers = with_passwd(
        Tar::new()
            .dir("etc")
            .file("etc/passwd", b"app:x:1000:1000::/:/bin/sh\n")
            .symlink("etc/group", fifo.to_str().unwrap()),
    );
    imported(dir.path(), &store, "group-fifo", layers, group);
    let ended = run_image(&store, "group-fifo", &[]).unwrap();
    assert_eq!(ended.code, 125, "{}", ended.stdout);
    assert!(
        ended
            .stderr
            .contains("group \"grp\" is not in its /etc/group"),
        "{}",
        ended.stderr
    );
}

/// FNV-1a as alcove's template names use it (a mismatch finds no template
/// and fails the test, never passes it).
fn fnv(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for &b in part.iter().chain(&[0xff]) {
            h = (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h
}

/// Where alcove pins the template of a rootfs made of `layers` (top first)
/// for the mount namespace with inode `ns`.
fn rootfs_template(ns: u64, layers: &[PathBuf]) -> PathBuf {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::MetadataExt;
    let mut owned: Vec<Vec<u8>> = vec![b"rootfs-v2".to_vec()];
    for layer in layers {
        let m = std::fs::metadata(layer).unwrap();
        owned.push(layer.as_os_str().as_bytes().to_vec());
        owned.push(b"\0".to_vec());
        owned.push(m.dev().to_le_bytes().to_vec());
        owned.push(m.ino().to_le_bytes().to_vec());
    }
    let parts: Vec<&[u8]> = owned.iter().map(Vec::as_slice).collect();
    Path::new("/run/alcove/templates")
        .join(format!("mnt-{ns}"))
        .join(format!("rootfs-{:016x}", fnv(&parts)))
}

fn mount_ns_inode() -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self/ns/mnt").unwrap().ino()
}

/// An image whose /data is an absolute link to a directory that exists on
/// the host (and, by the same path, in the image), run with a file bind and
/// a directory bind under /data and its working directory there: alcove,
/// as root, creates those mount points. Nothing may appear on the host.
fn mount_points_stay_in_the_image(from_scratch: bool) {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let victim = tempfile::tempdir_in("/var/tmp").unwrap();
    let victim_path = victim.path().to_str().unwrap().to_owned();
    let inside = victim_path.trim_start_matches('/');
    let mut tar = Tar::new().busybox().dir("var").dir("var/tmp").dir(inside);
    tar = tar.symlink("data", &victim_path);
    let config = json!({
        "WorkingDir": "/data/wd",
        "Cmd": ["/bin/sh", "-c", "cat /data/planted /data/d/inner; pwd"],
    });
    imported(dir.path(), &store, "links", vec![tar.finish()], config);
    let bound_file = dir.path().join("bound-file");
    std::fs::write(&bound_file, "bound-file\n").unwrap();
    let bound_dir = dir.path().join("bound-dir");
    std::fs::create_dir(&bound_dir).unwrap();
    std::fs::write(bound_dir.join("inner"), "bound-dir\n").unwrap();
    let binds = [
        format!("{}:/data/planted", bound_file.display()),
        format!("{}:/data/d", bound_dir.display()),
    ];
    let run: Vec<String> = [
        ALCOVE,
        "run",
        "--image",
        "links",
        "--image-store",
        store.to_str().unwrap(),
        "--bind",
        &binds[0],
        "--bind",
        &binds[1],
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let layer_dirs: Vec<PathBuf> = std::fs::read_dir(store.join("layers"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(layer_dirs.len(), 1);

    let (ended, template) = if from_scratch {
        // In a mount namespace of its own, whose template directory is
        // already full (alcove keeps at most 64), alcove builds the root from
        // a copy of the host's mount tree, as it does where templates cannot
        // be pinned. A directory already there for this namespace's inode
        // number is another, ended namespace's (numbers are reused): it goes
        // first, or its templates would count as this run's.
        let ns_file = dir.path().join("ns");
        let script = format!(
            "ns=$(stat -Lc %i /proc/self/ns/mnt); echo $ns > {}
            own=/run/alcove/templates/mnt-$ns; rm -rf $own; mkdir -p $own
            for i in $(seq 64); do : > $own/filler-$i; done
            exec \"$@\"",
            ns_file.display()
        );
        let ended = run_bounded(
            Command::new("unshare")
                .args([
                    "--mount",
                    "--propagation",
                    "private",
                    "sh",
                    "-c",
                    &script,
                    "sh",
                ])
                .args(&run),
        );
        let ns: u64 = std::fs::read_to_string(&ns_file)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let own = Path::new("/run/alcove/templates").join(format!("mnt-{ns}"));
        let templates: Vec<String> = std::fs::read_dir(&own)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| !n.starts_with("filler-") && !n.ends_with(".lock"))
            .collect();
        std::fs::remove_dir_all(&own).unwrap();
        assert!(
            templates.is_empty(),
            "the run was to build its root from scratch, but made templates {templates:?}"
        );
        (ended, None)
    } else {
        let ended = run_bounded(Command::new(ALCOVE).args(&run[1..]));
        (ended, Some(rootfs_template(mount_ns_inode(), &layer_dirs)))
    };
    let left: Vec<String> = std::fs::read_dir(victim.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        left.is_empty(),
        "alcove created {left:?} on the host, in {victim_path}, through the image's /data link"
    );
    let ended = ended.unwrap();
    // The working directory is the image's own (getcwd shows where /data led).
    assert_eq!(
        (ended.code, ended.stdout),
        (0, format!("bound-file\nbound-dir\n{victim_path}/wd\n")),
        "{}",
        ended.stderr
    );
    if let Some(template) = template {
        let used = template.exists();
        if used {
            // Unpin it: a test leaves no template behind.
            let c = std::ffi::CString::new(template.to_str().unwrap()).unwrap();
            // SAFETY: `c` is a valid NUL-terminated path.
            unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
            let _ = std::fs::remove_file(&template);
            let _ = std::fs::remove_file(template.with_extension("lock"));
        }
        assert!(
            used,
            "the run was to use a template, but {} does not exist (are 64 templates pinned already? `alcove gc`)",
            template.display()
        );
    }
}

#[test]
fn mount_points_under_image_links_stay_in_the_image_with_a_template() {
    if !root_or_skip("mount_points_under_image_links_stay_in_the_image_with_a_template") {
        return;
    }
    let _g = serial();
    mount_points_stay_in_the_image(false);
}

#[test]
fn mount_points_under_image_links_stay_in_the_image_from_scratch() {
    if !root_or_skip("mount_points_under_image_links_stay_in_the_image_from_scratch") {
        return;
    }
    let _g = serial();
    mount_points_stay_in_the_image(true);
}

/// Imports `layers` (an OCI layout of them) into a fresh store.
fn try_import(dir: &Path, case: &str, layers: Vec<Vec<u8>>, extra: &[&str]) -> (Ended, PathBuf) {
    let store = dir.join(format!("store-{case}"));
    let l = dir.join(format!("layout-{case}"));
    layout(&l, &layers, true, json!({}));
    // A child's peak memory starts at the parent's: hold nothing big.
    drop(layers);
    let mut args = vec!["import", l.to_str().unwrap(), "--name", "bad:1"];
    args.extend_from_slice(extra);
    let ended = run_bounded(
        Command::new(ALCOVE)
            .arg("image")
            .arg("--store")
            .arg(&store)
            .args(&args),
    )
    .unwrap_or_else(|e| panic!("{case}: {e}"));
    (ended, store)
}

/// The import was refused with `expect` in the message, leaving nothing in the store.
fn assert_refused_cleanly(case: &str, ended: &Ended, store: &Path, expect: &str) {
    let shown: String = ended.stderr.chars().take(2000).collect();
    assert_eq!(ended.code, 125, "{case}: {shown}");
    assert!(
        ended.stderr.contains(expect),
        "{case}: expected {expect:?} in: {shown}"
    );
    for sub in ["layers", "tmp", "leases"] {
        let left = std::fs::read_dir(store.join(sub)).map_or(0, Iterator::count);
        assert_eq!(left, 0, "{case}: {sub}/ was left with {left} entries");
    }
}

fn refused(dir: &Path, case: &str, layers: Vec<Vec<u8>>, extra: &[&str], expect: &str) {
    let (ended, store) = try_import(dir, case, layers, extra);
    assert_refused_cleanly(case, &ended, &store, expect);
}

#[test]
fn a_pax_size_counts_against_max_size() {
    if !root_or_skip("a_pax_size_counts_against_max_size") {
        return;
    }
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    // The header says 0 bytes, the PAX record 100 MiB, and 100 MiB follow.
    let size = 100u64 << 20;
    let tar = Tar::new()
        .pax(&[("size", size.to_string().as_bytes())])
        .file("big", b"")
        .raw(&vec![0u8; size as usize])
        .finish();
    refused(
        dir.path(),
        "pax-size",
        vec![tar],
        &["--max-size", "64M"],
        "more than 67108864 bytes",
    );
}

#[test]
fn malformed_pax_records_are_refused_not_a_panic() {
    if !root_or_skip("malformed_pax_records_are_refused_not_a_panic") {
        return;
    }
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let nul_link = Tar::new()
        .pax(&[("linkpath", b"/etc/passwd\0tail")])
        .symlink("link", "placeholder")
        .finish();
    refused(
        dir.path(),
        "nul-linkpath",
        vec![nul_link],
        &[],
        "a NUL byte in its link target",
    );
    // uid 2^32 would become 0 (root) if cut to 32 bits.
    let big_uid = Tar::new()
        .pax(&[("uid", b"4294967296")])
        .file("owned", b"x")
        .finish();
    refused(
        dir.path(),
        "uid-overflow",
        vec![big_uid],
        &[],
        "owner 4294967296:0 is out of range",
    );
}

#[test]
fn huge_metadata_entries_are_refused_without_eating_memory() {
    if !root_or_skip("huge_metadata_entries_are_refused_without_eating_memory") {
        return;
    }
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    for (case, kind) in [("long-name", b'L'), ("pax", b'x')] {
        // 160 MiB of name (or of PAX records) before an entry: a few hundred KB gzipped.
        let tar = Tar::new()
            .metadata(kind, &vec![b'a'; 160 << 20])
            .file("f", b"x")
            .finish();
        let (ended, store) = try_import(dir.path(), case, vec![tar], &[]);
        assert!(
            ended.max_rss_kib < 100 << 10,
            "{case}: the import peaked at {} MiB of memory",
            ended.max_rss_kib >> 10
        );
        assert_refused_cleanly(case, &ended, &store, "bytes of metadata before one entry");
    }
}

#[test]
fn layouts_are_read_without_following_links() {
    if !root_or_skip("layouts_are_read_without_following_links") {
        return;
    }
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    // A layout whose blobs/ is a link to a directory elsewhere on the host.
    let l = dir.path().join("layout");
    layout(&l, &[Tar::new().file("a", b"a").finish()], true, json!({}));
    let elsewhere = dir.path().join("elsewhere");
    std::fs::rename(l.join("blobs"), &elsewhere).unwrap();
    std::os::unix::fs::symlink(&elsewhere, l.join("blobs")).unwrap();
    let store = dir.path().join("store");
    let (code, err) = image_err(&store, &["import", l.to_str().unwrap(), "--name", "x"]);
    assert_eq!(code, 125, "{err}");
    assert!(err.contains("cannot be opened inside the layout"), "{err}");
}
