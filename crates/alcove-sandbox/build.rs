//! Compiles the default seccomp policy (seccomp/default.json) into one classic
//! BPF program at build time, so a sandbox start spends nothing on compiling.
//!
//! The policy is written in seccompiler's JSON format as two filters: `known`
//! (every syscall it names is let through, anything else gets ENOSYS) and `deny`
//! (EPERM for the dangerous ones, some only for certain arguments). Stacked as
//! seccompiler emits them, the two filters are linear chains of ~2,200
//! instructions, and the kernel's per-syscall action cache, which it computes by
//! walking the filter once for every syscall number on each install, made
//! loading them cost ~1.1 ms per sandbox. So seccompiler compiles each denied
//! syscall's rules on its own, and this script puts those pieces behind a binary
//! search on the syscall number: same decisions, one filter, ~20 instructions on
//! any path.

use seccompiler::sock_filter;
use std::collections::BTreeMap;
use std::path::PathBuf;

// BPF_LD | BPF_W | BPF_ABS (0x00 | 0x00 | 0x20)
#[path = "src/filter_tree.rs"]
mod filter_tree;
use filter_tree::{Verdict, BPF_JMP_JEQ_K, BPF_LD_W_ABS, RET_ERRNO, RET_KILL_PROCESS};

const ENOSYS: u32 = 38;
const EPERM: u32 = 1;
/// CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWUTS |
/// CLONE_NEWPID: the one `unshare` a warm template's copies make
/// (docs/warm-protocol.md; `seccomp::COPY_UNSHARE_FLAGS` repeats it).
const COPY_UNSHARE_FLAGS: u64 = 0x7c02_0000;

#[derive(Clone, Copy, PartialEq, Debug)]
enum Action {
    Allow,
    Unknown,
    /// Denied whatever the arguments.
    Deny,
    /// Denied for some arguments: seccompiler's chain for this syscall decides.
    Leaf(usize),
}

fn main() {
    let policy_path = "seccomp/default.json";
    println!("cargo:rerun-if-changed={policy_path}");
    println!("cargo:rerun-if-changed=build.rs");
    let arch = match std::env::var("CARGO_CFG_TARGET_ARCH").as_deref() {
        Ok("x86_64") => seccompiler::TargetArch::x86_64,
        Ok("aarch64") => seccompiler::TargetArch::aarch64,
        Ok("riscv64") => seccompiler::TargetArch::riscv64,
        other => panic!("no seccomp syscall table for target architecture {other:?}"),
    };
    let text = std::fs::read_to_string(policy_path).expect("read the seccomp policy");
    let policy: serde_json::Value = serde_json::from_str(&text).expect("parse the seccomp policy");
    // Stacking the filters exactly as written is the reference semantics; compiling
    // them once here also validates every syscall name against seccompiler's table.
    let stacked =
        seccompiler::compile_from_json(text.as_bytes(), arch).expect("compile the seccomp policy");
    let arch_check: Vec<sock_filter> = stacked["known"][..3].to_vec();

    let rules = |filter: &str| -> Vec<serde_json::Value> {
        policy[filter]["filter"]
            .as_array()
            .unwrap_or_else(|| panic!("{filter}.filter is a list"))
            .clone()
    };
    let compile = |rules: Vec<serde_json::Value>,
                   mismatch: serde_json::Value,
                   matched: serde_json::Value| {
        let json = serde_json::json!({"f": {"default_action": mismatch, "filter_action": matched, "filter": rules}});
        let mut map = seccompiler::compile_from_json(json.to_string().as_bytes(), arch)
            .expect("compile a rule group");
        map.remove("f").expect("filter f")
    };
    // The syscall number of a program holding one syscall's chain: prologue (3),
    // load nr (1), then the chain's JEQ.
    let number_of = |program: &[sock_filter]| -> u32 {
        assert_eq!(program[3].code, BPF_LD_W_ABS);
        assert_eq!(program[4].code, BPF_JMP_JEQ_K);
        program[4].k
    };

    let mut action: BTreeMap<u32, Action> = BTreeMap::new();
    let mut names: BTreeMap<u32, String> = BTreeMap::new();
    for rule in rules("known") {
        assert!(
            rule.get("args").is_none(),
            "known-filter rules take no arguments"
        );
        let name = rule["syscall"].as_str().expect("syscall name").to_owned();
        let program = compile(
            vec![rule],
            serde_json::json!({"errno": ENOSYS}),
            serde_json::json!("allow"),
        );
        let nr = number_of(&program);
        action.insert(nr, Action::Allow);
        names.insert(nr, name);
    }
    let known = action;
    // Builds the one-filter program for a list of deny rules over the known set.
    let program_for = |deny: Vec<serde_json::Value>| -> Vec<u8> {
        let mut action = known.clone();
        let mut groups: BTreeMap<String, Vec<serde_json::Value>> = BTreeMap::new();
        for rule in deny {
            let name = rule["syscall"].as_str().expect("syscall name").to_owned();
            groups.entry(name).or_default().push(rule);
        }
        let mut leaves: Vec<Vec<sock_filter>> = Vec::new();
        for (name, group) in groups {
            let unconditional = group.iter().all(|rule| rule.get("args").is_none());
            let program = compile(
                group,
                serde_json::json!("allow"),
                serde_json::json!({"errno": EPERM}),
            );
            let nr = number_of(&program);
            assert_eq!(
                action.get(&nr),
                Some(&Action::Allow),
                "{name} is denied but not known"
            );
            if unconditional {
                action.insert(nr, Action::Deny);
                continue;
            }
            action.insert(nr, Action::Leaf(leaves.len()));
            leaves.push(program);
        }

        // Runs of equal verdicts over the whole number line; past the last known
        // number (and x32's high numbers) everything is unknown.
        let last = *action.keys().last().expect("a non-empty policy");
        let verdict = |a: Action| match a {
            Action::Allow => Verdict::Return(filter_tree::RET_ALLOW),
            Action::Unknown => Verdict::Return(RET_ERRNO | ENOSYS),
            Action::Deny => Verdict::Return(RET_ERRNO | EPERM),
            Action::Leaf(i) => Verdict::Leaf(i),
        };
        let segments = filter_tree::segments(
            last,
            |nr| verdict(action.get(&nr).copied().unwrap_or(Action::Unknown)),
            verdict(Action::Unknown),
        );
        let audit_arch = arch_check[1].k; // seccompiler's arch check value
        let mut program: Vec<filter_tree::Insn> = filter_tree::prologue(audit_arch);
        let leaf_jumps = filter_tree::search(&segments, &mut program);
        let mut leaf_starts = Vec::new();
        for leaf in &leaves {
            leaf_starts.push(program.len());
            program.extend(leaf.iter().map(|i| filter_tree::Insn {
                code: i.code,
                jt: i.jt,
                jf: i.jf,
                k: i.k,
            }));
        }
        for (at, leaf) in leaf_jumps {
            program[at].k = (leaf_starts[leaf] - at - 1) as u32;
        }
        assert!(program.len() <= 4096, "BPF_MAXINSNS");
        assert_eq!(program[2].k, RET_KILL_PROCESS);

        let mut bytes = Vec::with_capacity(program.len() * 8);
        for i in &program {
            bytes.extend_from_slice(&i.code.to_ne_bytes());
            bytes.push(i.jt);
            bytes.push(i.jf);
            bytes.extend_from_slice(&i.k.to_ne_bytes());
        }
        bytes
    };
    let default_deny = rules("deny");
    // A warm template's copies put themselves into fresh namespaces: the template
    // may unshare exactly the copy's flag set, and mount, mount_setattr and move_mount (which
    // need capabilities it only has in a copy's own user namespace; a forked agent sandbox's copy
    // moves in the home the daemon cloned for it). Everything else stays denied.
    let template_deny: Vec<serde_json::Value> = default_deny
        .iter()
        .filter(|r| !matches!(r["syscall"].as_str(), Some("mount" | "mount_setattr" | "move_mount" | "unshare")) || r.get("args").is_some())
        .cloned()
        .chain(std::iter::once(serde_json::json!({"syscall": "unshare", "args": [{"index": 0, "type": "qword", "op": "ne", "val": COPY_UNSHARE_FLAGS}]})))
        .collect();
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR"));
    std::fs::write(out.join("seccomp_default.bpf"), program_for(default_deny))
        .expect("write the BPF program");
    std::fs::write(out.join("seccomp_template.bpf"), program_for(template_deny))
        .expect("write the template BPF program");
    let table: String = names
        .iter()
        .map(|(nr, name)| format!("    ({nr}, {name:?}),\n"))
        .collect();
    std::fs::write(
        out.join("syscall_table.rs"),
        format!("/// (number, name) of every syscall the policy names, by number.\npub(crate) static SYSCALLS: &[(u32, &str)] = &[\n{table}];\n"),
    )
    .expect("write the syscall table");
}
