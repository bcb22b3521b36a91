#[cfg(test)]
mod mapping_tests {
    use crate::verify::*;

    #[test]
    fn maps_lines_are_read_with_hex_devices_and_optional_paths() {
        let m = parse_maps_line(
            "7f1c2a000000-7f1c2a021000 rw-s 00000000 00:01 2052 /dev/zero (deleted)",
        )
        .unwrap();
        assert!(m.shared);
        assert_eq!(m.path, "/dev/zero (deleted)");
        let m = parse_maps_line("55d0c8a00000-55d0c8a21000 rw-p 00000000 00:00 0 ").unwrap();
        assert!(!m.shared);
        assert_eq!(m.path, "");
        let m = parse_maps_line("7f00-7f01 r--s 00000000 fe:1a 12 /usr/lib/x.cache").unwrap();
        assert!(!m.writable);
        assert!(parse_maps_line("garbage").is_none());
        let smaps = "7f00-7f01 r--s 00000000 fe:1a 12 /usr/lib/x.cache\nRss: 4 kB\nVmFlags: rd sh mr me \n\
                     7f02-7f03 r--s 00000000 00:01 9 /dev/zero (deleted)\nVmFlags: rd sh mr mw me ms \n";
        assert_eq!(may_write(smaps, "7f00-7f01"), Some(false));
        assert_eq!(may_write(smaps, "7f02-7f03"), Some(true));
        assert_eq!(may_write(smaps, "7f04-7f05"), None);
    }
}

#[cfg(test)]
mod checks {
    use crate::verify::*;
    use std::io::Read;
    use std::os::unix::ffi::OsStrExt;

    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::net::{UnixListener, UnixStream};
    use std::process::{Child, Command, Stdio};
    use std::time::{Duration, Instant};

    /// /proc/PID/status of a copy that did everything right (kernel 6.18).
    const COPY_STATUS: &str = "Name:\tpython3\nUmask:\t0022\nState:\tS (sleeping)\n\
        Tgid:\t1\nNgid:\t0\nPid:\t1\nPPid:\t0\nTracerPid:\t0\nUid:\t65534\t65534\t65534\t65534\n\
        Gid:\t65534\t65534\t65534\t65534\nFDSize:\t64\nGroups:\t \nNStgid:\t20113\t1\n\
        NSpid:\t20113\t1\nNSpgid:\t20110\t0\nNSsid:\t5845\t0\nKthread:\t0\n\
        VmPeak:\t   17796 kB\nVmSize:\t   17796 kB\nVmRSS:\t    9880 kB\nThreads:\t1\n\
        SigQ:\t0/96363\nSigPnd:\t0000000000000000\nShdPnd:\t0000000000000000\n\
        SigBlk:\t0000000000000000\nSigIgn:\t0000000001001000\nSigCgt:\t0000000100000002\n\
        CapInh:\t0000000000000000\nCapPrm:\t0000000000000000\nCapEff:\t0000000000000000\n\
        CapBnd:\t0000000000000000\nCapAmb:\t0000000000000000\nNoNewPrivs:\t1\n\
        Seccomp:\t2\nSeccomp_filters:\t2\n\
        Speculation_Store_Bypass:\tthread vulnerable\n\
        SpeculationIndirectBranch:\tconditional enabled\nCpus_allowed:\t3\n\
        Cpus_allowed_list:\t0-1\nvoluntary_ctxt_switches:\t3\nnonvoluntary_ctxt_switches:\t1\n";

    /// mountinfo as a systemd host writes it: optional fields, a bind mount
    /// of a subdirectory, escaped names, an empty source.
    const MOUNTINFO: &str = "\
22 28 0:21 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
25 28 0:5 / /dev rw,nosuid,relatime shared:2 master:1 - devtmpfs udev rw,size=8000000k,mode=755
28 1 254:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw,errors=remount-ro
30 25 0:24 / /dev/pts rw,nosuid,noexec,relatime shared:3 - devpts devpts rw,gid=5,mode=620,ptmxmode=000
300 28 0:50 / /mnt/my\\040disk ro,nosuid,nodev shared:150 - tmpfs none ro,size=4k
301 28 254:1 /srv/data /data rw,relatime - ext4 /dev/vda1 rw
302 28 0:61 / /weird\\134name\\011tab rw,relatime - tmpfs  rw
";

    #[test]
    fn parse_status_reads_a_copy() {
        let status = parse_status(COPY_STATUS).unwrap();
        assert_eq!(
            status,
            Status {
                state: Some('S'),
                threads: Some(1),
                caps: [Some(0); 5],
                no_new_privs: Some(1),
                seccomp: Some(2),
                seccomp_filters: Some(2),
                ppid: Some(0),
                innermost_pid: Some(1),
            }
        );
    }

    #[test]
    fn parse_status_reads_capability_masks_in_hexadecimal() {
        let text = "State:\tR (running)\nThreads:\t14\nCapInh:\t0000000000000000\n\
            CapPrm:\t000001fffeffffff\nCapEff:\t000001fffeffffff\nCapBnd:\t000001fffeffffff\n\
            CapAmb:\t0000000000000000\nNoNewPrivs:\t0\nSeccomp:\t0\nSeccomp_filters:\t0\n";
        let status = parse_status(text).unwrap();
        assert_eq!(status.threads, Some(14));
        assert_eq!(status.caps[1], Some(0x1fffeffffff));
        assert_eq!(status.caps[3], Some(0x1fffeffffff));
        assert_eq!(status.caps[4], Some(0));
    }

    #[test]
    fn parse_status_leaves_missing_lines_out() {
        // A kernel older than 5.9 has no Seccomp_filters line.
        let status = parse_status("State:\tS (sleeping)\nSeccomp:\t2\n").unwrap();
        assert_eq!(status.seccomp, Some(2));
        assert_eq!(status.seccomp_filters, None);
        assert_eq!(status.threads, None);
    }

    #[test]
    fn parse_status_refuses_a_field_that_is_not_a_number() {
        let err = parse_status("Threads:\tmany\n").unwrap_err();
        assert!(err.contains("Threads"), "{err}");
        let err = parse_status("CapEff:\tzz\n").unwrap_err();
        assert!(err.contains("CapEff"), "{err}");
    }

    #[test]
    fn parse_mountinfo_reads_every_line() {
        let mounts = parse_mountinfo(MOUNTINFO).unwrap();
        assert_eq!(mounts.len(), 7);
        assert_eq!(
            mounts[1],
            Mount {
                id: 25,
                dev: Dev { major: 0, minor: 5 },
                mount_point: PathBuf::from("/dev"),
                writable: true,
                devpts: false,
            }
        );
        assert_eq!(
            mounts[2].dev,
            Dev {
                major: 254,
                minor: 1
            }
        );
        assert!(mounts[3].devpts);
        // Escaped spaces, per-mount ro although nothing else says so.
        assert_eq!(mounts[4].mount_point, PathBuf::from("/mnt/my disk"));
        assert!(!mounts[4].writable);
        // A bind mount of a subdirectory has the superblock of /.
        assert_eq!(mounts[5].dev, mounts[2].dev);
        assert_eq!(mounts[5].mount_point, PathBuf::from("/data"));
        // An empty source does not shift the fields alcove reads.
        assert_eq!(mounts[6].mount_point, PathBuf::from("/weird\\name\ttab"));
        assert_eq!(mounts[6].id, 302);
    }

    #[test]
    fn parse_mountinfo_reads_per_mount_options_only() {
        // ro per mount, rw superblock: not writable through this mount.
        let text = "40 28 0:40 / /ro-bind ro,relatime - tmpfs tmpfs rw\n";
        assert!(!parse_mountinfo(text).unwrap()[0].writable);
        let text = "41 28 0:41 / /rw relatime,rw - tmpfs tmpfs ro\n";
        assert!(parse_mountinfo(text).unwrap()[0].writable);
    }

    #[test]
    fn parse_mountinfo_refuses_a_line_without_the_separator() {
        let text = "22 28 0:21 / /sys rw shared:7 sysfs sysfs rw\n";
        let err = parse_mountinfo(text).unwrap_err();
        assert!(err.starts_with("line 1"), "{err}");
        assert!(parse_mountinfo("22 28 0-21 / /sys rw - sysfs sysfs rw").is_err());
        assert!(parse_mountinfo("x 28 0:21 / /sys rw - sysfs sysfs rw").is_err());
    }

    #[test]
    fn unescape_undoes_octal_escapes_only() {
        assert_eq!(unescape("/a\\040b"), b"/a b");
        assert_eq!(unescape("\\011\\012\\134"), b"\t\n\\");
        // Not an escape: kept as it is.
        assert_eq!(unescape("/a\\x\\04"), b"/a\\x\\04");
        assert_eq!(unescape("/a\\777"), b"/a\\777");
    }

    #[test]
    fn parse_fdinfo_reads_flags_in_octal_and_the_mount() {
        let text = "pos:\t0\nflags:\t02100002\nmnt_id:\t15\nino:\t1057\n";
        let info = parse_fdinfo(text).unwrap();
        assert_eq!(info.mnt_id, 15);
        assert_eq!(info.flags, 0o2100002);
        assert_eq!(info.flags & libc::O_ACCMODE as u32, libc::O_RDWR as u32);
        let eventfd = "pos:\t0\nflags:\t02004002\nmnt_id:\t16\nino:\t1057\n\
            eventfd-count:                0\neventfd-id: 1\neventfd-semaphore: 0\n";
        assert_eq!(parse_fdinfo(eventfd).unwrap().mnt_id, 16);
        let read_only = "pos:\t4096\nflags:\t0100000\nmnt_id:\t27\nino:\t393231\n";
        assert_eq!(parse_fdinfo(read_only).unwrap().flags & 3, 0);
    }

    #[test]
    fn parse_fdinfo_refuses_what_it_cannot_read() {
        assert!(parse_fdinfo("pos:\t0\nflags:\t0100000\n")
            .unwrap_err()
            .contains("mnt_id"));
        assert!(parse_fdinfo("flags:\t9\nmnt_id:\t1\n")
            .unwrap_err()
            .contains("octal"));
    }

    #[test]
    fn parse_ns_link_takes_the_inode_of_its_own_kind() {
        assert_eq!(parse_ns_link("net:[4026531840]", "net"), Some(4026531840));
        assert_eq!(parse_ns_link("net:[4026531840]", "mnt"), None);
        assert_eq!(parse_ns_link("net:4026531840", "net"), None);
        assert_eq!(parse_ns_link("user:[]", "user"), None);
    }

    #[test]
    fn classify_link_names_each_kind() {
        assert_eq!(classify_link(b"socket:[99]"), LinkKind::Socket);
        assert_eq!(classify_link(b"pipe:[1234]"), LinkKind::Pipe);
        assert_eq!(classify_link(b"anon_inode:[eventfd]"), LinkKind::AnonInode);
        assert_eq!(classify_link(b"anon_inode:inotify"), LinkKind::AnonInode);
        assert_eq!(classify_link(b"/memfd:cache (deleted)"), LinkKind::Memfd);
        assert_eq!(classify_link(b"/dev/null"), LinkKind::Path);
        assert_eq!(classify_link(b"/tmp/log (deleted)"), LinkKind::Path);
        assert_eq!(classify_link(b"net:[4026531840]"), LinkKind::Other);
        assert_eq!(classify_link(b""), LinkKind::Other);
    }

    #[test]
    fn stat_state_reads_past_a_command_with_parentheses() {
        assert_eq!(stat_state("42 (a) b) Z 1 42 42 0"), Some('Z'));
        assert_eq!(stat_state("42 (sleep) S 1 42"), Some('S'));
        assert_eq!(stat_state("42 (sleep"), None);
    }

    #[test]
    fn parse_children_lists_pids() {
        assert_eq!(parse_children(""), "");
        assert_eq!(parse_children("812 815 "), "812 815");
    }

    #[test]
    fn exempt_is_by_path_component() {
        let shared = [PathBuf::from("/data")];
        assert!(exempt(Path::new("/data"), &shared));
        assert!(exempt(Path::new("/data/cache"), &shared));
        assert!(!exempt(Path::new("/database"), &shared));
        assert!(!exempt(Path::new("/"), &shared));
        assert!(!exempt(Path::new("/data"), &[]));
        let odd = [PathBuf::from("/d\u{FFFD}")];
        assert!(!exempt(Path::new("/d\u{FFFD}"), &odd));
    }

    #[test]
    fn first_difference_names_the_line() {
        let template = "4:memory:/alcove/f\n0::/alcove/f\n";
        let copy = "4:memory:/other\n0::/alcove/f\n";
        assert_eq!(
            first_difference(template, copy),
            "the template's \"4:memory:/alcove/f\", the copy's \"4:memory:/other\""
        );
        assert!(first_difference(template, "").contains("nothing in the copy's"));
    }

    #[test]
    fn terminals_are_told_by_major() {
        assert!(is_terminal_major(5)); // /dev/tty, /dev/ptmx
        assert!(is_terminal_major(136)); // /dev/pts/N
        assert!(!is_terminal_major(1)); // /dev/null, /dev/urandom
        assert!(!is_terminal_major(10)); // misc
    }

    #[test]
    fn a_descriptor_refusal_says_what_to_do() {
        let refused = CopyRefused::Pipe {
            fd: 5,
            link: "pipe:[1234]".into(),
        };
        assert_eq!(
            refused.to_string(),
            "descriptor 5 (pipe:[1234]) is open in the copy; made during initialisation, it \
             would be shared by every copy: close it before the runtime says ready"
        );
    }

    #[test]
    fn read_bounded_refuses_a_longer_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        fs::write(&path, "12345").unwrap();
        assert_eq!(read_bounded(&path, 5).unwrap(), "12345");
        assert!(matches!(
            read_bounded(&path, 4),
            Err(VerifyError::TooLong { limit: 4, .. })
        ));
        assert_eq!(read_prefix(&path, 3).unwrap(), "123");
    }

    // ---- Real processes. They need root (CI runs them as root).

    fn root(test: &str) -> bool {
        // SAFETY: geteuid takes no arguments, touches no memory and cannot fail.
        let euid = unsafe { libc::geteuid() };
        if euid != 0 {
            eprintln!("{test}: skipped: it needs root (to start a copy as another user)");
        }
        euid == 0
    }

    fn own_pid() -> libc::pid_t {
        std::process::id() as libc::pid_t
    }

    /// Kills and reaps what a test started, however the test ends: the copy
    /// (whose parent is `child`, so that it is reaped there), then `child`.
    /// (Were `child` killed first, the copy would die of its parent-death
    /// signal and be reaped by init.)
    struct Reap {
        child: Option<Child>,
        copy: Option<libc::pid_t>,
    }

    impl Drop for Reap {
        fn drop(&mut self) {
            if let Some(pid) = self.copy {
                // SAFETY: kill takes no pointers. `pid` is a child of
                // `self.child`, which has not been reaped yet, so the pid is
                // still the copy's.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            let Some(mut child) = self.child.take() else {
                return;
            };
            // The middle process exits once it has reaped the copy.
            let deadline = Instant::now() + Duration::from_secs(2);
            while self.copy.is_some() && Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    #[test]
    fn template_facts_of_this_process() {
        if !root("template_facts_of_this_process") {
            return;
        }
        let facts = TemplateFacts::read(own_pid()).unwrap();
        assert_eq!(facts.pid(), own_pid());
        let link = fs::read_link("/proc/self/ns/net").unwrap();
        assert_eq!(
            Some(facts.namespaces[3]),
            parse_ns_link(&link.to_string_lossy(), "net")
        );
        assert!(!facts.writable.is_empty(), "root has writable mounts");
        assert!(!facts.mounts.is_empty());
        assert_eq!(
            facts.cgroup,
            fs::read_to_string("/proc/self/cgroup").unwrap()
        );
        assert!(thread_count(own_pid()).unwrap() >= 1);
    }

    #[test]
    fn a_plain_child_is_refused_for_its_namespaces() {
        if !root("a_plain_child_is_refused_for_its_namespaces") {
            return;
        }
        let facts = TemplateFacts::read(own_pid()).unwrap();
        let child = Command::new("sleep").arg("5").spawn().unwrap();
        let pid = child.id() as libc::pid_t;
        let _reap = Reap {
            child: Some(child),
            copy: None,
        };
        came_from(pid, &facts).unwrap();
        let refused = check_copy(pid, &facts, &[]).unwrap_err();
        assert!(
            matches!(refused, CopyRefused::SharedNamespace { kind: "user", .. }),
            "{refused:?}"
        );
    }

    #[test]
    fn a_copy_that_has_exited_is_gone() {
        if !root("a_copy_that_has_exited_is_gone") {
            return;
        }
        let facts = TemplateFacts::read(own_pid()).unwrap();
        let mut child = Command::new("true").spawn().unwrap();
        let pid = child.id() as libc::pid_t;
        // A zombie first: exited, not yet reaped.
        let deadline = Instant::now() + Duration::from_secs(5);
        while !is_gone(pid) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(2));
        }
        let refused = check_copy(pid, &facts, &[]).unwrap_err();
        assert!(matches!(refused, CopyRefused::Gone { .. }), "{refused:?}");
        assert!(matches!(
            came_from(pid, &facts),
            Err(CopyRefused::Gone { .. })
        ));
        child.wait().unwrap();
    }

    /// A copy made the protocol's way, in Python (run as nobody, with
    /// no_new_privs). `argv[1]` says what it does wrong, if anything: `pipe`
    /// keeps a pipe, `socket` a socket pair, `rodir` a directory of the
    /// host's (writable) root file system opened read-only, `memfd` a memfd
    /// reopened read-only, `eventfd` an eventfd; `cwd` changes to a
    /// directory of the host's root it opened before its unshare; `keeprw`
    /// leaves the mounts writable. The first process unshares and forks the copy
    /// (pid 1 of its pid namespace) and reaps it; the copy connects to
    /// `argv[2]`, says `copy` and waits.
    const COPY_SCRIPT: &str = r#"
import ctypes, os, signal, socket, struct, sys

mode, path = sys.argv[1], sys.argv[2]
libc = ctypes.CDLL(None, use_errno=True)
L = ctypes.c_ulong

def check(rc, what):
    if rc < 0:
        e = ctypes.get_errno()
        raise OSError(e, f'{what}: {os.strerror(e)}')

def prctl(option, arg2=0):
    return libc.prctl(L(option), L(arg2), L(0), L(0), L(0))

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REC, MS_PRIVATE = 0x4000, 1 << 18
CLONE_FLAGS = 0x10000000 | 0x00020000 | 0x40000000 | 0x08000000 | 0x04000000 | 0x20000000

class MountAttr(ctypes.Structure):
    _fields_ = [('attr_set', ctypes.c_uint64), ('attr_clr', ctypes.c_uint64),
                ('propagation', ctypes.c_uint64), ('userns_fd', ctypes.c_uint64)]

class Fprog(ctypes.Structure):
    _fields_ = [('len', ctypes.c_ushort), ('filter', ctypes.c_void_p)]

check(prctl(1, signal.SIGKILL), 'PR_SET_PDEATHSIG')
keep = []
if mode == 'pipe':
    keep += os.pipe()
elif mode == 'socket':
    keep += [s.detach() for s in socket.socketpair()]
elif mode == 'rodir':
    keep.append(os.open(os.path.dirname(path), os.O_RDONLY | os.O_DIRECTORY))
elif mode == 'memfd':
    writable = os.memfd_create('cache')
    keep.append(os.open(f'/proc/self/fd/{writable}', os.O_RDONLY))
    os.close(writable)
elif mode == 'eventfd':
    keep.append(os.eventfd(0))
elif mode == 'shm':
    import mmap
    shared = mmap.mmap(-1, 4096)  # MAP_SHARED | MAP_ANONYMOUS, kept by the global
elif mode == 'cwd':
    outside = os.open(os.path.dirname(path), os.O_RDONLY | os.O_DIRECTORY)

uid, gid = os.getuid(), os.getgid()
check(libc.unshare(ctypes.c_int(CLONE_FLAGS)), 'unshare')
for name, text in (('setgroups', 'deny'), ('uid_map', f'{uid} {uid} 1'), ('gid_map', f'{gid} {gid} 1')):
    with open(f'/proc/self/{name}', 'w') as f:
        f.write(text)
check(libc.mount(None, b'/', None, L(MS_REC | MS_PRIVATE), None), 'make / private')
if mode != 'keeprw':
    # Every mount read-only, those hidden under others included.
    attr = MountAttr(1, 0, 0, 0)
    check(libc.syscall(L(442), ctypes.c_int(-100), b'/', ctypes.c_uint(0x8000),
                       ctypes.byref(attr), ctypes.c_size_t(ctypes.sizeof(attr))), 'mount_setattr')
for target, extra in ((b'/tmp', 0), (b'/dev/shm', MS_NOEXEC)):
    if os.path.isdir(target):
        check(libc.mount(b'tmpfs', target, b'tmpfs', L(MS_NOSUID | MS_NODEV | extra),
                         b'mode=1777,size=1048576'), 'tmpfs on ' + target.decode())
if os.path.isdir(b'/dev/pts'):
    check(libc.mount(b'devpts', b'/dev/pts', b'devpts', L(MS_NOSUID | MS_NOEXEC),
                     b'newinstance,ptmxmode=0666,mode=0620'), 'devpts')
cap_last = int(open('/proc/sys/kernel/cap_last_cap').read())
devnull = os.open('/dev/null', os.O_RDWR)

pid = os.fork()
if pid:
    print(pid, flush=True)  # for the test to kill, should the copy never connect
    _, status = os.waitpid(pid, 0)
    if status:
        print(f'the copy ended with wait status {status:#x}', file=sys.stderr)
    sys.exit(0)

step = 'start'
err = os.dup(2)
try:
    step = 'PR_SET_PDEATHSIG'
    check(prctl(1, signal.SIGKILL), step)
    step = 'mount proc'
    check(libc.mount(b'proc', b'/proc', b'proc', L(MS_NOSUID | MS_NODEV | MS_NOEXEC), None), step)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    if mode == 'cwd':
        os.fchdir(outside)  # then closed with the rest
    else:
        os.chdir('/tmp')  # its own tmpfs
    for fd in range(3, 1024):
        if fd not in keep and fd != err:
            try:
                os.close(fd)
            except OSError:
                pass
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    step = 'PR_CAPBSET_DROP'
    for cap in range(cap_last + 1):
        check(prctl(24, cap), step)
    step = 'capset'
    header = (ctypes.c_uint32 * 2)(0x20080522, 0)
    data = (ctypes.c_uint32 * 6)()
    check(libc.syscall(L(126), header, data), step)
    step = 'seccomp'
    allow = ctypes.create_string_buffer(struct.pack('=HBBI', 0x06, 0, 0, 0x7fff0000))
    prog = Fprog(1, ctypes.addressof(allow))
    check(libc.prctl(L(22), L(2), ctypes.byref(prog), L(0), L(0)), step)
    step = 'connect'
    os.close(err)
    err = None
    s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    s.connect(path)
    s.send(b'copy')
    s.recv(16)
    os._exit(0)
except BaseException as e:
    if err is not None:
        os.write(err, f'copy: {step}: {e}\n'.encode())
    os._exit(70)
"#;

    /// A copy started with `mode`, connected, and its pid from `SO_PEERCRED`.
    struct StartedCopy {
        pid: libc::pid_t,
        /// The copy's parent, which stands for the template (alcove's copies
        /// are reparented to it; here the script keeps its copy as a child).
        parent: libc::pid_t,
        // Dropped in this order: the connection, the processes, the directory.
        _connection: UnixStream,
        _reap: Reap,
        _dir: tempfile::TempDir,
    }

    impl StartedCopy {
        /// `base` with the copy's parent as the template.
        fn facts(&self, base: &TemplateFacts) -> TemplateFacts {
            let mut facts = base.clone();
            facts.pid = self.parent;
            facts
        }
    }

    fn start_copy(mode: &str) -> StartedCopy {
        // Not under /tmp or /dev/shm: the copy mounts fresh ones over them.
        let dir = tempfile::Builder::new()
            .prefix("alcove-warm-test-")
            .tempdir_in("/var/tmp")
            .unwrap();
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
        let path = dir.path().join("copy.sock");
        let listener = listen_seqpacket(&path);
        fs::set_permissions(&path, fs::Permissions::from_mode(0o777)).unwrap();

        let child = Command::new("setpriv")
            .args(["--reuid", "65534", "--regid", "65534", "--clear-groups"])
            .args(["--no-new-privs", "--", "/usr/bin/python3", "-I", "-c"])
            .arg(COPY_SCRIPT)
            .arg(mode)
            .arg(&path)
            .current_dir("/")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("setpriv and /usr/bin/python3 run");
        let mut reap = Reap {
            child: Some(child),
            copy: None,
        };
        // The middle process writes the copy's pid once it has forked it, or
        // nothing if it failed before.
        let mut line = String::new();
        let stdout = reap.child.as_mut().unwrap().stdout.take().unwrap();
        io::BufRead::read_line(&mut io::BufReader::new(stdout), &mut line).unwrap();
        reap.copy = line.trim().parse().ok();

        listener.set_nonblocking(true).unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut connection = loop {
            match listener.accept() {
                Ok((connection, _)) => break connection,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("accept: {e}"),
            }
            let child = reap.child.as_mut().unwrap();
            if let Some(status) = child.try_wait().unwrap() {
                let mut stderr = String::new();
                let _ = child.stderr.take().unwrap().read_to_string(&mut stderr);
                panic!("the copy's script ended ({status}) before connecting: {stderr}");
            }
            assert!(Instant::now() < deadline, "no copy connected in 20 s");
            std::thread::sleep(Duration::from_millis(2));
        };
        let pid = peer_pid(&connection);
        assert_eq!(reap.copy, Some(pid), "SO_PEERCRED names the copy");
        connection
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut hello = [0; 16];
        let n = connection.read(&mut hello).unwrap();
        assert_eq!(&hello[..n], b"copy");
        let parent = reap.child.as_ref().unwrap().id() as libc::pid_t;
        StartedCopy {
            pid,
            parent,
            _connection: connection,
            _reap: reap,
            _dir: dir,
        }
    }

    fn listen_seqpacket(path: &Path) -> UnixListener {
        // SAFETY: socket takes no pointers; its result is checked before use.
        let fd =
            unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC, 0) };
        assert!(fd >= 0, "socket: {}", io::Error::last_os_error());
        // SAFETY: `fd` was just returned by socket and nothing else owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: sockaddr_un is plain old data, for which all zeroes is a valid value.
        let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
        addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
        let bytes = path.as_os_str().as_bytes();
        assert!(bytes.len() < addr.sun_path.len(), "socket path too long");
        for (dst, src) in addr.sun_path.iter_mut().zip(bytes) {
            *dst = *src as libc::c_char;
        }
        let len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
        // SAFETY: `addr` is an initialised sockaddr_un that outlives the call,
        // `len` is its size, and `fd` is an open socket.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_un).cast(),
                len,
            )
        };
        assert_eq!(rc, 0, "bind: {}", io::Error::last_os_error());
        // SAFETY: listen takes no pointers; `fd` is an open, bound socket.
        let rc = unsafe { libc::listen(fd.as_raw_fd(), 8) };
        assert_eq!(rc, 0, "listen: {}", io::Error::last_os_error());
        UnixListener::from(fd)
    }

    fn peer_pid(connection: &UnixStream) -> libc::pid_t {
        let mut cred = libc::ucred {
            pid: 0,
            uid: 0,
            gid: 0,
        };
        let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
        // SAFETY: `cred` and `len` are valid for writes for the whole call and
        // `len` holds `cred`'s size; the descriptor is a connected unix socket
        // that `connection` owns.
        let rc = unsafe {
            libc::getsockopt(
                connection.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_PEERCRED,
                (&mut cred as *mut libc::ucred).cast(),
                &mut len,
            )
        };
        assert_eq!(rc, 0, "SO_PEERCRED: {}", io::Error::last_os_error());
        cred.pid
    }

    #[test]
    fn a_copy_made_the_protocol_s_way_passes() {
        if !root("a_copy_made_the_protocol_s_way_passes") {
            return;
        }
        let facts = TemplateFacts::read(own_pid()).unwrap();
        let copy = start_copy("ok");
        came_from(copy.pid, &facts).unwrap();
        assert_eq!(thread_count(copy.pid).unwrap(), 1);
        check_copy(copy.pid, &copy.facts(&facts), &[]).unwrap();

        let mut times: Vec<Duration> = (0..300)
            .map(|_| {
                let start = Instant::now();
                check_copy(copy.pid, &copy.facts(&facts), &[]).unwrap();
                start.elapsed()
            })
            .collect();
        times.sort();
        let start = Instant::now();
        let _ = TemplateFacts::read(own_pid()).unwrap();
        let facts_time = start.elapsed();
        eprintln!(
            "check_copy on a real copy, 300 runs: min {:?}, median {:?}, p90 {:?}, max {:?}; \
             TemplateFacts::read of this process {facts_time:?}",
            times[0], times[150], times[270], times[299]
        );
    }

    #[test]
    fn a_copy_keeping_a_pipe_is_refused() {
        if !root("a_copy_keeping_a_pipe_is_refused") {
            return;
        }
        let facts = TemplateFacts::read(own_pid()).unwrap();
        let copy = start_copy("pipe");
        let refused = check_copy(copy.pid, &copy.facts(&facts), &[]).unwrap_err();
        match &refused {
            CopyRefused::Pipe { link, .. } => assert!(link.starts_with("pipe:["), "{refused}"),
            other => panic!("refused for {other:?}, not the pipe"),
        }
    }

    #[test]
    fn a_copy_keeping_a_shared_mapping_is_refused() {
        if !root("a_copy_keeping_a_shared_mapping_is_refused") {
            return;
        }
        let facts = TemplateFacts::read(own_pid()).unwrap();
        let copy = start_copy("shm");
        let refused = check_copy(copy.pid, &copy.facts(&facts), &[]).unwrap_err();
        match &refused {
            CopyRefused::SharedMapping { what, .. } => {
                assert!(what.starts_with("/dev/zero"), "{refused}")
            }
            other => panic!("refused for {other:?}, not the shared mapping"),
        }
    }

    #[test]
    fn a_copy_keeping_a_second_socket_is_refused() {
        if !root("a_copy_keeping_a_second_socket_is_refused") {
            return;
        }
        let facts = TemplateFacts::read(own_pid()).unwrap();
        let copy = start_copy("socket");
        let refused = check_copy(copy.pid, &copy.facts(&facts), &[]).unwrap_err();
        assert!(
            matches!(refused, CopyRefused::SecondSocket { .. }),
            "{refused:?}"
        );
    }

    #[test]
    fn a_copy_keeping_a_read_only_directory_of_a_writable_mount_is_refused() {
        if !root("a_copy_keeping_a_read_only_directory_of_a_writable_mount_is_refused") {
            return;
        }
        let facts = TemplateFacts::read(own_pid()).unwrap();
        let copy = start_copy("rodir");
        let refused = check_copy(copy.pid, &copy.facts(&facts), &[]).unwrap_err();
        assert!(
            matches!(refused, CopyRefused::FileOnWritableMount { .. }),
            "{refused:?}"
        );
    }

    #[test]
    fn a_copy_leaving_the_template_s_mounts_writable_is_refused() {
        if !root("a_copy_leaving_the_template_s_mounts_writable_is_refused") {
            return;
        }
        let facts = TemplateFacts::read(own_pid()).unwrap();
        let copy = start_copy("keeprw");
        let refused = check_copy(copy.pid, &copy.facts(&facts), &[]).unwrap_err();
        assert!(
            matches!(refused, CopyRefused::SharedWritableMount { .. }),
            "{refused:?}"
        );
        // The owner's shared mounts are exempt: with all of them shared,
        // the mounts pass and nothing else is wrong.
        check_copy(copy.pid, &copy.facts(&facts), &[PathBuf::from("/")]).unwrap();
    }

    #[test]
    fn a_copy_keeping_a_read_only_memfd_is_refused() {
        if !root("a_copy_keeping_a_read_only_memfd_is_refused") {
            return;
        }
        let facts = TemplateFacts::read(own_pid()).unwrap();
        let copy = start_copy("memfd");
        let refused = check_copy(copy.pid, &copy.facts(&facts), &[]).unwrap_err();
        match &refused {
            CopyRefused::Memfd { link, .. } => {
                assert!(link.starts_with("/memfd:cache"), "{refused}")
            }
            other => panic!("refused for {other:?}, not the memfd"),
        }
    }

    #[test]
    fn a_copy_keeping_an_eventfd_is_refused() {
        if !root("a_copy_keeping_an_eventfd_is_refused") {
            return;
        }
        let facts = TemplateFacts::read(own_pid()).unwrap();
        let copy = start_copy("eventfd");
        let refused = check_copy(copy.pid, &copy.facts(&facts), &[]).unwrap_err();
        assert!(
            matches!(refused, CopyRefused::EventDescriptor { .. }),
            "{refused:?}"
        );
    }

    #[test]
    fn a_copy_working_in_a_directory_of_a_writable_mount_is_refused() {
        if !root("a_copy_working_in_a_directory_of_a_writable_mount_is_refused") {
            return;
        }
        let facts = TemplateFacts::read(own_pid()).unwrap();
        let copy = start_copy("cwd");
        let refused = check_copy(copy.pid, &copy.facts(&facts), &[]).unwrap_err();
        assert!(
            matches!(
                refused,
                CopyRefused::PlaceOnWritableMount {
                    what: "working directory",
                    ..
                }
            ),
            "{refused:?}"
        );
    }
}
