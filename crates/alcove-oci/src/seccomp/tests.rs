//! Tests of the compiler without the kernel: the generated programs run in
//! a small classic-BPF interpreter and are compared, call by call, with a
//! direct reading of the profile; `cases` holds the tests of particular
//! profiles and errors, `kernel` runs filters for real.

mod cases;
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
            16..=60 if off.is_multiple_of(4) => {
                let arg = d.args[(off as usize - 16) / 8];
                if off.is_multiple_of(8) {
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

/// Rule blocks of every length around 255 instructions, so some jump's
/// target lies exactly at the edge of what an 8-bit offset reaches.
#[test]
fn jumps_at_the_edge_of_reach() {
    for eq_rules in 50..70u64 {
        for gt_rules in 0..5u64 {
            let rule = |name: &str, op: &str, i: u64| {
                json!({"names": [name], "action": "SCMP_ACT_ERRNO", "errnoRet": i + 1,
                    "args": [{"index": 0, "value": 1000 - i, "op": op}]})
            };
            // read's block (5 or 6 instructions a rule) lies between the
            // leaf for write and write's block.
            let entries: Vec<Value> = (0..eq_rules)
                .map(|i| rule("read", "SCMP_CMP_EQ", i))
                .chain((0..gt_rules).map(|i| rule("read", "SCMP_CMP_GT", 90 + i)))
                .chain([rule("write", "SCMP_CMP_EQ", 0)])
                .collect();
            let p = profile(json!({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": entries}));
            let prog = compile(&p).unwrap().program;
            for nr in [0, 1, 2] {
                for a0 in (900..1002).chain([0, u64::MAX]) {
                    let d = Data::new(nr, [a0, 0, 0, 0, 0, 0]);
                    assert_eq!(
                        run(&prog, &d),
                        reference(&p, &d),
                        "{eq_rules} {gt_rules} {d:x?}"
                    );
                }
            }
        }
    }
}
