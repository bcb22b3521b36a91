//! The rootfs set up for real: the test binary re-runs itself under
//! `unshare --mount --pid --fork` (so every mount dies with that process),
//! prepares and enters a busybox rootfs from a spec with the usual mounts,
//! and checks from inside, reporting through its exit code and stdout.

use super::*;
use std::io::{Read, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::process::Command;

const HELPER: &str = "ALCOVE_ROOTFS_TEST_HELPER";

fn spec(host_file: &Path) -> Spec {
    let json = serde_json::json!({
        "ociVersion": "1.0.2",
        "root": {"path": "rootfs", "readonly": true},
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
             "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs",
             "options": ["nosuid", "noexec", "nodev", "ro"]},
            {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
             "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]},
            {"destination": "/data/hostfile", "type": "bind", "source": host_file,
             "options": ["rbind", "ro", "nosuid"]},
            {"destination": "/escape", "type": "tmpfs", "source": "tmpfs",
             "options": ["nodev", "mode=750", "size=65536k"]},
            {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "nodev", "size=1m"]},
            {"destination": "/opt", "type": "tmpfs", "source": "tmpfs",
             "options": ["tmpcopyup", "size=1m"]}
        ],
        "linux": {
            "namespaces": [{"type": "mount"}, {"type": "pid"}],
            "maskedPaths": ["/proc/kcore", "/secret", "/secretfile", "/does/not/exist"],
            "readonlyPaths": ["/proc/sys", "/missing/too"],
            "devices": [{"path": "/dev/fuse", "type": "c", "major": 10, "minor": 229,
                         "fileMode": 384, "uid": 0, "gid": 0}]
        }
    });
    serde_json::from_value(json).unwrap()
}

/// A busybox rootfs in `dir` with an `/escape -> /../../etc` link, a
/// secret dir to mask and a file for tmpcopyup to carry over.
fn build_rootfs(dir: &Path) -> PathBuf {
    let rootfs = dir.join("rootfs");
    for d in ["bin", "proc", "dev", "etc", "secret", "opt"] {
        std::fs::create_dir_all(rootfs.join(d)).unwrap();
    }
    std::fs::copy("/usr/bin/busybox", rootfs.join("bin/busybox")).unwrap();
    std::os::unix::fs::symlink("busybox", rootfs.join("bin/sh")).unwrap();
    std::os::unix::fs::symlink("/../../etc", rootfs.join("escape")).unwrap();
    std::fs::write(rootfs.join("secret/key"), b"hidden").unwrap();
    std::fs::write(rootfs.join("secretfile"), b"hidden").unwrap();
    std::fs::write(rootfs.join("opt/carried"), b"carried").unwrap();
    std::fs::write(dir.join("hostfile"), b"hello").unwrap();
    rootfs
}

fn run_helper(no_pivot: bool, user_ns: bool) {
    if !alcove_sys::process::is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().canonicalize().unwrap();
    build_rootfs(&dir);
    let mut unshare = Command::new("unshare");
    if user_ns {
        unshare.args(["--user", "--map-root-user"]);
    }
    let out = unshare
        .args(["--mount", "--pid", "--fork", "--"])
        .arg(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "rootfs::tests::helper",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(HELPER, &dir)
        .env(
            "ALCOVE_ROOTFS_TEST_NO_PIVOT",
            if no_pivot { "1" } else { "0" },
        )
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    print!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "the helper failed: {:?}", out.status);
    assert!(
        stdout.contains("ALL CHECKS PASSED"),
        "the helper did not finish"
    );
    // The host's /etc was not covered, and nothing is left mounted.
    assert_ne!(
        alcove_sys::fs::filesystem_magic(c"/etc").unwrap(),
        libc::TMPFS_MAGIC
    );
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(dir.to_str().unwrap()),
        "a mount leaked to the host"
    );
}

#[test]
fn prepare_and_enter_with_pivot_root() {
    run_helper(false, false);
}

#[test]
fn prepare_and_enter_with_no_pivot() {
    run_helper(true, false);
}

/// In a user namespace: devices are bound from the host, sysfs and the
/// remounts keep the flags the kernel locked.
#[test]
fn prepare_and_enter_in_a_user_namespace() {
    run_helper(false, true);
}

/// Runs only when re-executed by [`run_helper`]: set up, enter, check.
#[test]
fn helper() {
    let Some(dir) = std::env::var_os(HELPER) else {
        return;
    };
    let dir = PathBuf::from(dir);
    let rootfs = dir.join("rootfs");
    let spec = spec(&dir.join("hostfile"));
    let plan = RootfsPlan {
        spec: &spec,
        rootfs: &rootfs,
        no_pivot: std::env::var("ALCOVE_ROOTFS_TEST_NO_PIVOT").as_deref() == Ok("1"),
        new_user_ns: std::env::var("ALCOVE_ROOTFS_TEST_USER_NS").as_deref() == Ok("1"),
    };
    let mut failures = 0;
    let mut check = |name: &str, ok: bool, detail: String| {
        println!(
            "CHECK {name}: {}{detail}",
            if ok { "ok " } else { "FAILED " }
        );
        if !ok {
            failures += 1;
        }
    };
    if let Err(e) = prepare(&plan) {
        println!("prepare failed: {}", chain(&e));
        std::process::exit(2);
    }
    let etc = alcove_sys::fs::filesystem_magic(c"/etc").unwrap();
    check(
        "host /etc untouched",
        etc != libc::TMPFS_MAGIC,
        String::new(),
    );
    check(
        "image /etc covered",
        is_tmpfs(&rootfs.join("etc")),
        String::new(),
    );
    if let Err(e) = enter(&plan) {
        println!("enter failed: {}", chain(&e));
        std::process::exit(3);
    }
    check_inside(&mut check);
    if failures == 0 {
        println!("ALL CHECKS PASSED");
    }
    std::process::exit(if failures == 0 { 0 } else { 1 });
}

fn check_inside(check: &mut impl FnMut(&str, bool, String)) {
    let cwd = std::env::current_dir().map(|p| p.display().to_string());
    check(
        "cwd is /",
        cwd.as_deref().ok() == Some("/"),
        format!("{cwd:?}"),
    );
    check(
        "busybox at /bin",
        Path::new("/bin/busybox").is_file(),
        String::new(),
    );
    let erofs = |path: &str| {
        let r = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(path);
        match r {
            Err(e) => (e.raw_os_error() == Some(libc::EROFS), format!("{e}")),
            Ok(_) => (false, "writable".to_owned()),
        }
    };
    let (ok, d) = erofs("/newfile");
    check("root read-only", ok, d);
    let hostfile = std::fs::read_to_string("/data/hostfile");
    check(
        "bound file readable",
        hostfile.as_deref().ok() == Some("hello"),
        format!("{hostfile:?}"),
    );
    let (ok, d) = erofs("/data/hostfile");
    check("bound file read-only", ok, d);
    let (ok, d) = erofs("/proc/sys/kernel/hostname");
    check("/proc/sys read-only", ok, d);
    let mut null = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null");
    let null_ok = null.as_mut().is_ok_and(|f| {
        let mut buf = [0u8; 4];
        f.write_all(b"gone").is_ok() && f.read(&mut buf).ok() == Some(0)
    });
    check("/dev/null works", null_ok, format!("{:?}", null.err()));
    let mut zero = [1u8; 8];
    let zero_ok = std::fs::File::open("/dev/zero")
        .and_then(|mut f| f.read_exact(&mut zero))
        .is_ok();
    check(
        "/dev/zero reads zeros",
        zero_ok && zero == [0; 8],
        String::new(),
    );
    let fuse = std::fs::metadata("/dev/fuse");
    // In a user namespace the host's node is bound, with the host's mode.
    let bound = std::env::var("ALCOVE_ROOTFS_TEST_USER_NS").as_deref() == Ok("1");
    let fuse_ok = fuse.as_ref().is_ok_and(|m| {
        m.file_type().is_char_device()
            && m.rdev() == libc::makedev(10, 229)
            && (bound || m.mode() & 0o7777 == 0o600)
    });
    check("/dev/fuse made as listed", fuse_ok, format!("{fuse:?}"));
    let ptmx = std::fs::read_link("/dev/ptmx");
    check(
        "/dev/ptmx -> pts/ptmx",
        ptmx.as_deref().ok() == Some(Path::new("pts/ptmx")),
        format!("{ptmx:?}"),
    );
    check(
        "/dev/pts/ptmx exists",
        Path::new("/dev/pts/ptmx").exists(),
        String::new(),
    );
    let fd = std::fs::read_link("/dev/fd");
    check(
        "/dev/fd link",
        fd.as_deref().ok() == Some(Path::new("/proc/self/fd")),
        format!("{fd:?}"),
    );
    let kcore = std::fs::metadata("/proc/kcore");
    let kcore_ok = kcore
        .as_ref()
        .map_or(true, |m| m.rdev() == libc::makedev(1, 3));
    check("/proc/kcore masked", kcore_ok, format!("{kcore:?}"));
    let file = std::fs::read_to_string("/secretfile");
    check(
        "masked file reads empty",
        file.as_deref().ok() == Some(""),
        format!("{file:?}"),
    );
    let secret = std::fs::read_dir("/secret").map(|d| d.count());
    check(
        "masked dir empty",
        secret.as_ref().ok() == Some(&0),
        format!("{secret:?}"),
    );
    let (ok, d) = erofs("/secret/new");
    check("masked dir read-only", ok, d);
    let etc = std::fs::metadata("/etc").map(|m| m.permissions().mode() & 0o7777);
    check(
        "tmpfs via link has mode=750",
        etc.as_ref().ok() == Some(&0o750),
        format!("{etc:?}"),
    );
    check(
        "/etc is a tmpfs",
        is_tmpfs(Path::new("/etc")),
        String::new(),
    );
    let tmp_ok = std::fs::write("/tmp/x", b"y").is_ok();
    check("/tmp writable", tmp_ok, String::new());
    let carried = std::fs::read_to_string("/opt/carried");
    check(
        "tmpcopyup carried",
        carried.as_deref().ok() == Some("carried"),
        format!("{carried:?}"),
    );
    check(
        "/opt is a tmpfs",
        is_tmpfs(Path::new("/opt")),
        String::new(),
    );
    let procs = Path::new("/sys/fs/cgroup/memory/cgroup.procs").exists();
    check("cgroup v1 memory bound", procs, String::new());
    let (ok, d) = erofs("/sys/fs/cgroup/new");
    check("cgroup root read-only", ok, d);
    let dev_mode = std::fs::metadata("/dev").map(|m| m.permissions().mode() & 0o7777);
    check(
        "/dev mode 755",
        dev_mode.as_ref().ok() == Some(&0o755),
        format!("{dev_mode:?}"),
    );
    let proc_pid1 = std::fs::read_link("/proc/self").map(|p| p.display().to_string());
    check(
        "/proc is the new pid namespace's",
        proc_pid1.as_deref().ok() == Some("1"),
        format!("{proc_pid1:?}"),
    );
    let sh = Command::new("/bin/sh")
        .args(["-c", "echo inside; test -d /proc/1"])
        .output();
    let sh_ok = sh
        .as_ref()
        .is_ok_and(|o| o.status.success() && o.stdout == b"inside\n");
    check("busybox sh runs inside", sh_ok, format!("{sh:?}"));
    let host_gone = !Path::new(&std::env::var(HELPER).unwrap_or_default())
        .join("hostfile")
        .exists();
    check("host files unreachable", host_gone, String::new());
}

fn is_tmpfs(path: &Path) -> bool {
    let c = cstring(path).unwrap();
    alcove_sys::fs::filesystem_magic(&c).is_ok_and(|m| m == libc::TMPFS_MAGIC)
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
