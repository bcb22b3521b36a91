//! Particular profiles through the interpreter: podman's own, the table,
//! actions and flags, precedence between rules, and bounded input.

use super::*;

/// podman's profile with its includes and excludes resolved as podman
/// resolves them for x86_64 and `caps`, and `drop` taken out of the lists.
pub(super) fn podman_profile(caps: &[&str], drop: &[&str]) -> Option<Value> {
    let text = std::fs::read_to_string(PODMAN_PROFILE).ok()?;
    let mut v: Value = serde_json::from_str(&text).expect("podman's profile is JSON");
    let list = |v: &Value, key: &str| -> Vec<String> {
        v.get(key)
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    };
    let keep = |e: &Value| {
        let (inc, exc) = (&e["includes"], &e["excludes"]);
        let arches = list(inc, "arches");
        (arches.is_empty() || arches.iter().any(|a| a == "amd64"))
            && list(inc, "caps").iter().all(|c| caps.contains(&c.as_str()))
            && !list(exc, "arches").iter().any(|a| a == "amd64")
            && !list(exc, "caps").iter().any(|c| caps.contains(&c.as_str()))
    };
    let syscalls: Vec<Value> = v["syscalls"]
        .as_array()?
        .iter()
        .filter(|e| keep(e))
        .map(|e| {
            let mut e = e.clone();
            let names: Vec<Value> = e["names"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|n| !drop.contains(&n.as_str().unwrap()))
                .cloned()
                .collect();
            e["names"] = json!(names);
            for key in ["includes", "excludes", "comment"] {
                e.as_object_mut().unwrap().remove(key);
            }
            e
        })
        .collect();
    let obj = v.as_object_mut()?;
    obj.remove("archMap");
    obj.remove("defaultErrno");
    obj.insert(
        "architectures".into(),
        json!(["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]),
    );
    obj.insert("syscalls".into(), json!(syscalls));
    Some(v)
}

/// podman's default capabilities.
pub(super) const PODMAN_CAPS: [&str; 11] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_NET_BIND_SERVICE",
    "CAP_SETFCAP",
    "CAP_SETGID",
    "CAP_SETPCAP",
    "CAP_SETUID",
    "CAP_SYS_CHROOT",
];

#[test]
fn podmans_profile_compiles_and_decides_every_number() {
    let Some(v) = podman_profile(&PODMAN_CAPS, &[]) else {
        eprintln!("skipped: {PODMAN_PROFILE} is not installed");
        return;
    };
    let p = profile(v);
    let compiled = compile(&p).unwrap();
    assert!(
        compiled.program.len() < 1000,
        "{} instructions",
        compiled.program.len()
    );
    assert_eq!((compiled.flags, compiled.notify), (0, false));
    for nr in 0..520 {
        for persona in [0u64, 8, 0x2_0000, 0xffff_ffff, 7, 0x1_0000_0000] {
            let d = Data::new(nr, [persona, 16, 9, 0, 0, 0]);
            assert_eq!(run(&compiled.program, &d), reference(&p, &d), "{d:x?}");
        }
    }
    let d = |name: &str, arg0: u64| Data::new(syscall_number(name).unwrap(), [arg0, 0, 0, 0, 0, 0]);
    let prog = &compiled.program;
    assert_eq!(run(prog, &d("read", 0)), ALLOW);
    assert_eq!(run(prog, &d("personality", 8)), ALLOW);
    assert_eq!(run(prog, &d("personality", 7)), errno(38));
    assert_eq!(run(prog, &d("kexec_load", 0)), errno(1));
    assert_eq!(run(prog, &d("bpf", 0)), errno(1), "needs CAP_SYS_ADMIN");
    assert_eq!(run(prog, &d("arch_prctl", 0)), ALLOW, "an amd64 include");
    assert_eq!(
        run(
            prog,
            &Data {
                arch: 0x4000_0003,
                ..d("read", 0)
            }
        ),
        KILL_PROCESS
    );
}

#[test]
fn the_table_is_sorted_and_agrees_with_libc() {
    assert!(table::X86_64.windows(2).all(|w| w[0].0 < w[1].0));
    let mut numbers: Vec<u32> = table::X86_64.iter().map(|e| e.1).collect();
    numbers.sort_unstable();
    numbers.dedup();
    assert_eq!(numbers.len(), table::X86_64.len(), "numbers are unique");
    for (name, nr) in [
        ("read", libc::SYS_read),
        ("mkdir", libc::SYS_mkdir),
        ("getppid", libc::SYS_getppid),
        ("clone3", libc::SYS_clone3),
        ("fchmodat2", libc::SYS_fchmodat2),
        ("mseal", libc::SYS_mseal),
        ("futex_waitv", libc::SYS_futex_waitv),
    ] {
        assert_eq!(syscall_number(name), Some(nr as u32), "{name}");
    }
    assert_eq!(syscall_number("arm_fadvise64_64"), None);
    assert_eq!(syscall_number(""), None);
}

#[test]
fn actions_and_flags() {
    let p = profile(
        json!({"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 38,
        "flags": ["SECCOMP_FILTER_FLAG_TSYNC", "SECCOMP_FILTER_FLAG_LOG", "SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV"],
        "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ERRNO"},
                     {"names": ["write"], "action": "SCMP_ACT_TRACE"},
                     {"names": ["getpid"], "action": "SCMP_ACT_KILL"},
                     {"names": ["close", "nosuchcall"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38}]}),
    );
    let c = compile(&p).unwrap();
    let at = |name: &str| {
        run(
            &c.program,
            &Data::new(syscall_number(name).unwrap(), [0; 6]),
        )
    };
    assert_eq!(
        at("read"),
        errno(libc::EPERM),
        "ERRNO without errnoRet is EPERM"
    );
    assert_eq!(at("write"), libc::SECCOMP_RET_TRACE | libc::EPERM as u32);
    assert_eq!(at("getpid"), libc::SECCOMP_RET_KILL_THREAD);
    assert_eq!(at("close"), errno(38));
    assert_eq!(at("openat"), errno(38), "the default takes defaultErrnoRet");
    assert!(!c.notify);
    assert_eq!(
        c.flags,
        (libc::SECCOMP_FILTER_FLAG_TSYNC | libc::SECCOMP_FILTER_FLAG_LOG) as u32,
        "WAIT_KILLABLE_RECV goes without a listener"
    );
    let p = profile(
        json!({"defaultAction": "SCMP_ACT_ALLOW", "listenerPath": "/a",
        "flags": ["SECCOMP_FILTER_FLAG_TSYNC", "SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV"],
        "syscalls": [{"names": ["getppid"], "action": "SCMP_ACT_NOTIFY"}]}),
    );
    let c = compile(&p).unwrap();
    assert!(c.notify);
    assert_eq!(
        c.flags,
        (libc::SECCOMP_FILTER_FLAG_TSYNC
            | libc::SECCOMP_FILTER_FLAG_TSYNC_ESRCH
            | libc::SECCOMP_FILTER_FLAG_NEW_LISTENER
            | libc::SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV) as u32
    );
    // A notify rule for a call x86_64 lacks needs no listener.
    let p = profile(json!({"defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [{"names": ["arm_fadvise64_64"], "action": "SCMP_ACT_NOTIFY"}]}));
    assert!(!compile(&p).unwrap().notify);
}

#[test]
fn precedence_follows_libseccomp_and_runc() {
    let p = profile(json!({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
        {"names": ["read"], "action": "SCMP_ACT_ERRNO", "errnoRet": 5,
         "args": [{"index": 0, "value": 1, "op": "SCMP_CMP_EQ"}]},
        {"names": ["read"], "action": "SCMP_ACT_ERRNO", "errnoRet": 6},
        {"names": ["read"], "action": "SCMP_ACT_ERRNO", "errnoRet": 7},
        {"names": ["write"], "action": "SCMP_ACT_ALLOW"},
        {"names": ["write"], "action": "SCMP_ACT_ERRNO", "errnoRet": 9,
         "args": [{"index": 0, "value": 1, "op": "SCMP_CMP_EQ"}, {"index": 0, "value": 2, "op": "SCMP_CMP_EQ"}]}]}));
    let prog = compile(&p).unwrap().program;
    let at = |nr: u32, a0: u64| run(&prog, &Data::new(nr, [a0, 0, 0, 0, 0, 0]));
    assert_eq!(at(0, 1), errno(6), "the first unconditional rule wins");
    assert_eq!(at(0, 2), errno(6));
    // The default-action rule for write is dropped; the same argument
    // twice means either value.
    assert_eq!(at(1, 1), errno(9));
    assert_eq!(at(1, 2), errno(9));
    assert_eq!(at(1, 3), ALLOW);
}

#[test]
fn input_is_bounded() {
    let many: Vec<Value> = (0..MAX_ENTRIES + 1)
        .map(|_| json!({"names": ["read"], "action": "SCMP_ACT_ALLOW"}))
        .collect();
    let cases = [
        (
            json!({"defaultAction": "SCMP_ACT_ERRNO", "syscalls": many}),
            "more than 4096",
        ),
        (
            json!({"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ALLOW",
                "args": (0..7).map(|i| json!({"index": i % 6, "value": 0, "op": "SCMP_CMP_EQ"})).collect::<Vec<_>>()}]}),
            "7 argument conditions",
        ),
        (
            json!({"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ALLOW",
                "args": [{"index": 6, "value": 0, "op": "SCMP_CMP_EQ"}]}]}),
            "argument 6",
        ),
        (
            json!({"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ERRNO", "errnoRet": 65536}]}),
            "65536",
        ),
        (
            json!({"defaultAction": "SCMP_ACT_NOTIFY"}),
            "default action",
        ),
        (
            json!({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["read"], "action": "SCMP_ACT_NOTIFY"}]}),
            "listenerPath",
        ),
    ];
    for (v, expect) in cases {
        let err = compile(&profile(v)).unwrap_err().to_string();
        assert!(err.contains(expect), "{err}");
    }
    // Six conditions on every syscall: far more than the kernel takes.
    let all: Vec<Value> = table::X86_64
        .iter()
        .map(|(n, _)| json!({"names": [n], "action": "SCMP_ACT_ALLOW",
            "args": (0..6).map(|i| json!({"index": i, "value": i, "op": "SCMP_CMP_GT"})).collect::<Vec<_>>()}))
        .collect();
    let err = compile(&profile(
        json!({"defaultAction": "SCMP_ACT_ERRNO", "syscalls": all}),
    ))
    .unwrap_err();
    assert!(
        matches!(err, SeccompError::TooLong(n) if n > MAX_INSTRUCTIONS),
        "{err}"
    );
}
