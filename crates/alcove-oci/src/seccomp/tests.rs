//! Tests of the compiler without the kernel: the generated programs run in
//! a small classic-BPF interpreter and are compared, call by call, with a
//! direct reading of the profile. `kernel` runs filters for real.

mod kernel;

use super::bpf::{AUDIT_ARCH_X86_64, X32_SYSCALL_BIT};
use super::*;
use serde_json::{json, Value};

const ALLOW: u32 = libc::SECCOMP_RET_ALLOW;
const KILL_PROCESS: u32 = libc::SECCOMP_RET_KILL_PROCESS;
const PODMAN_PROFILE: &str = "/usr/share/containers/seccomp.json";

fn errno(e: i32) -> u32 {
    libc::SECCOMP_RET_ERRNO | e as u32
}

pub(super) fn profile(v: Value) -> LinuxSeccomp {
    serde_json::from_value(v).expect("a valid profile")
}

/// `struct seccomp_data` as the filter sees it.
#[derive(Clone, Copy, Debug)]
struct Data {
    nr: u32,
    arch: u32,
    args: [u64; 6],
}

impl Data {
    fn new(nr: u32, args: [u64; 6]) -> Data {
        Data {
            nr,
            arch: AUDIT_ARCH_X86_64,
            args,
        }
    }
}

/// Runs `prog` on `d` as the kernel would; panics on anything a seccomp
/// program may not do (a jump out of the program, an unknown instruction).
fn run(prog: &[libc::sock_filter], d: &Data) -> u32 {
    let word = |off: u32| -> u32 {
        match off {
            0 => d.nr,
            4 => d.arch,
            16..=60 if off % 4 == 0 => {
                let arg = d.args[(off as usize - 16) / 8];
                if off % 8 == 0 {
                    arg as u32
                } else {
                    (arg >> 32) as u32
                }
            }
            _ => panic!("load from offset {off}"),
        }
    };
    let (mut a, mut pc) = (0u32, 0usize);
    loop {
        let ins = prog[pc];
        let cond = |c: bool| usize::from(if c { ins.jt } else { ins.jf });
        pc += 1 + match ins.code {
            0x20 => {
                a = word(ins.k);
                0
            }
            0x54 => {
                a &= ins.k;
                0
            }
            0x05 => ins.k as usize,
            0x15 => cond(a == ins.k),
            0x25 => cond(a > ins.k),
            0x35 => cond(a >= ins.k),
            0x06 => return ins.k,
            code => panic!("instruction {code:#x}"),
        };
    }
}

/// The profile's answer for `d`, read directly from the spec with the
/// semantics the module documents.
fn reference(p: &LinuxSeccomp, d: &Data) -> u32 {
    if d.arch != AUDIT_ARCH_X86_64 || (d.nr >= X32_SYSCALL_BIT && d.nr != u32::MAX) {
        return KILL_PROCESS;
    }
    let default = action(p.default_action(), p.default_errno_ret()).unwrap();
    let mut unconditional = None;
    let mut conditional: Vec<(Vec<LinuxSeccompArg>, u32)> = Vec::new();
    for e in p.syscalls().as_deref().unwrap_or_default() {
        if !e.names().iter().any(|n| syscall_number(n) == Some(d.nr)) {
            continue;
        }
        let act = action(e.action(), e.errno_ret()).unwrap();
        if act == default {
            continue;
        }
        let args = e.args().clone().unwrap_or_default();
        if args.is_empty() {
            unconditional.get_or_insert(act);
        } else if (0..args.len()).any(|i| args[..i].iter().any(|a| a.index() == args[i].index())) {
            conditional.extend(args.iter().map(|a| (vec![*a], act)));
        } else {
            conditional.push((args, act));
        }
    }
    if let Some(act) = unconditional {
        return act;
    }
    let holds = |a: &LinuxSeccompArg| {
        let (v, x) = (d.args[a.index()], a.value());
        match a.op() {
            LinuxSeccompOperator::ScmpCmpNe => v != x,
            LinuxSeccompOperator::ScmpCmpLt => v < x,
            LinuxSeccompOperator::ScmpCmpLe => v <= x,
            LinuxSeccompOperator::ScmpCmpEq => v == x,
            LinuxSeccompOperator::ScmpCmpGe => v >= x,
            LinuxSeccompOperator::ScmpCmpGt => v > x,
            LinuxSeccompOperator::ScmpCmpMaskedEq => v & x == a.value_two().unwrap_or(0),
        }
    };
    conditional
        .iter()
        .find(|(args, _)| args.iter().all(holds))
        .map_or(default, |(_, act)| *act)
}

/// Values whose halves collide in every way a 64-bit compare can get wrong.
const VALUES: [u64; 14] = [
    0,
    1,
    5,
    7,
    0xffff_ffff,
    0x1_0000_0000,
    0x1_0000_0004,
    0x1_0000_0005,
    0x1_0000_0006,
    0x1_ffff_ffff,
    0x2_0000_0005,
    0x8000_0000_0000_0000,
    0xffff_ffff_0000_0005,
    u64::MAX,
];

/// A small deterministic generator (xorshift), so failures reproduce.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn pick<'a, T>(&mut self, from: &'a [T]) -> &'a T {
        &from[self.next() as usize % from.len()]
    }
}

const OPS: [&str; 7] = [
    "SCMP_CMP_NE",
    "SCMP_CMP_LT",
    "SCMP_CMP_LE",
    "SCMP_CMP_EQ",
    "SCMP_CMP_GE",
    "SCMP_CMP_GT",
    "SCMP_CMP_MASKED_EQ",
];

fn random_action(rng: &mut Rng) -> Value {
    let actions = [
        json!({"action": "SCMP_ACT_ALLOW"}),
        json!({"action": "SCMP_ACT_ERRNO"}),
        json!({"action": "SCMP_ACT_ERRNO", "errnoRet": 38}),
        json!({"action": "SCMP_ACT_ERRNO", "errnoRet": 1}),
        json!({"action": "SCMP_ACT_KILL_PROCESS"}),
        json!({"action": "SCMP_ACT_TRAP"}),
        json!({"action": "SCMP_ACT_LOG"}),
        json!({"action": "SCMP_ACT_TRACE", "errnoRet": 3}),
        json!({"action": "SCMP_ACT_NOTIFY"}),
    ];
    rng.pick(&actions).clone()
}

fn random_profile(rng: &mut Rng) -> Value {
    const NAMES: [&str; 9] = [
        "read",
        "getpid",
        "lseek",
        "mkdir",
        "fcntl",
        "personality",
        "clone3",
        "mseal",
        "arm_fadvise64_64",
    ];
    let mut default = random_action(rng);
    if default["action"] == "SCMP_ACT_NOTIFY" {
        default = json!({"action": "SCMP_ACT_ERRNO"});
    }
    let entries = (0..rng.next() % 8)
        .map(|_| {
            let mut e = random_action(rng);
            let names: Vec<&str> = (0..1 + rng.next() % 3).map(|_| *rng.pick(&NAMES)).collect();
            e["names"] = json!(names);
            let args: Vec<Value> = (0..rng.next() % 4)
                .map(|_| {
                    json!({"index": rng.next() % 6, "value": rng.pick(&VALUES),
                        "valueTwo": rng.pick(&VALUES), "op": rng.pick(&OPS)})
                })
                .collect();
            if !args.is_empty() {
                e["args"] = json!(args);
            }
            e
        })
        .collect::<Vec<_>>();
    json!({
        "defaultAction": default["action"],
        "defaultErrnoRet": default.get("errnoRet"),
        "listenerPath": "/run/agent.sock",
        "syscalls": entries,
    })
}

fn random_data(rng: &mut Rng, numbers: &[u32]) -> Data {
    let mut args = [0u64; 6];
    for a in &mut args {
        *a = *rng.pick(&VALUES);
    }
    let mut d = Data::new(*rng.pick(numbers), args);
    match rng.next() % 20 {
        0 => d.arch = 0x4000_0003, // i386
        1 => d.nr |= X32_SYSCALL_BIT,
        2 => d.nr = u32::MAX,
        _ => {}
    }
    d
}

#[test]
fn random_profiles_match_the_reference() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let numbers: Vec<u32> = [
        "read",
        "getpid",
        "lseek",
        "mkdir",
        "fcntl",
        "personality",
        "clone3",
        "mseal",
        "write",
    ]
    .iter()
    .map(|n| syscall_number(n).unwrap())
    .collect();
    for _ in 0..2000 {
        let v = random_profile(&mut rng);
        let p = profile(v.clone());
        let compiled = compile(&p).unwrap_or_else(|e| panic!("{e}: {v}"));
        for _ in 0..100 {
            let d = random_data(&mut rng, &numbers);
            assert_eq!(
                run(&compiled.program, &d),
                reference(&p, &d),
                "{d:x?} under {v}"
            );
        }
    }
}

#[test]
fn every_comparison_on_both_halves() {
    for op in OPS {
        for &value in &VALUES {
            for &two in &VALUES {
                let v = json!({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["lseek"],
                    "action": "SCMP_ACT_ERRNO", "args": [{"index": 3, "value": value, "valueTwo": two, "op": op}]}]});
                let p = profile(v.clone());
                let prog = compile(&p).unwrap().program;
                for &arg in &VALUES {
                    let d = Data::new(8, [0, 0, 0, arg, 0, 0]);
                    assert_eq!(run(&prog, &d), reference(&p, &d), "{arg:#x} under {v}");
                }
            }
        }
    }
}

/// Enough conditional rules that the tree's leaves lie more than 255
/// instructions from their rules: every far jump goes through a `ja`.
#[test]
fn long_programs_jump_right() {
    let names: Vec<&str> = table::X86_64.iter().map(|(n, _)| *n).take(150).collect();
    let entries: Vec<Value> = names
        .iter()
        .enumerate()
        .map(|(i, n)| {
            json!({"names": [n], "action": "SCMP_ACT_ERRNO", "errnoRet": i,
                "args": [{"index": i % 6, "value": VALUES[i % VALUES.len()], "op": OPS[i % 7], "valueTwo": 5},
                         {"index": (i + 1) % 6, "value": VALUES[(i + 3) % VALUES.len()], "op": OPS[(i + 2) % 7]}]})
        })
        .collect();
    let p = profile(json!({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": entries}));
    let prog = compile(&p).unwrap().program;
    assert!(prog.len() > 1000, "{} instructions", prog.len());
    assert!(prog.iter().any(|i| i.code == 0x05), "some jump needs a ja");
    let numbers: Vec<u32> = names.iter().map(|n| syscall_number(n).unwrap()).collect();
    let mut rng = Rng(7);
    for _ in 0..50_000 {
        let d = random_data(&mut rng, &numbers);
        assert_eq!(run(&prog, &d), reference(&p, &d), "{d:x?}");
    }
}

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
