//! Which devices the container may open or create: the spec's
//! `linux.resources.devices` rules as v1's `devices.allow` / `devices.deny`
//! lines, and for the unified hierarchy as an eBPF program of type
//! BPF_PROG_TYPE_CGROUP_DEVICE built here from raw instructions (as runc and
//! crun build theirs; no libbpf, no compiler).
//!
//! Both give the rules v1's meaning: the default is deny, the last rule that
//! matches an access decides it, a type-`a` rule matches every device and
//! access, and a rule matches an access when the access asks for no more
//! than the rule's `rwm` letters. The program tests the rules last to first
//! and returns at the first match.
//!
//! On a hybrid host the v1 controller enforces the rules and the program is
//! attached as well; if the kernel refuses the program there, v1 alone
//! enforces. Where only v2 exists, a refused program is an error.

use super::CgroupsError;
use alcove_sys::bpf_prog::{self, BpfInsn};
use oci_spec::runtime::{LinuxDeviceCgroup, LinuxDeviceType};
use std::os::fd::AsFd;
use std::path::Path;

/// One rule, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Rule {
    allow: bool,
    /// `b` or `c`; `None` for every type (`a`).
    kind: Option<char>,
    major: Option<u32>,
    minor: Option<u32>,
    /// `rwm` letters, in that order.
    access: String,
}

impl Rule {
    fn from_spec(rule: &LinuxDeviceCgroup) -> Result<Self, CgroupsError> {
        let invalid = |reason: String| CgroupsError::Invalid {
            what: "device rule",
            reason,
        };
        let kind = match rule.typ() {
            None | Some(LinuxDeviceType::A) => None,
            Some(LinuxDeviceType::B) => Some('b'),
            Some(LinuxDeviceType::C | LinuxDeviceType::U) => Some('c'),
            Some(LinuxDeviceType::P) => {
                return Err(invalid(
                    "the device cgroup cannot filter FIFOs (type p)".into(),
                ))
            }
        };
        let number = |n: Option<i64>, what: &str| match n {
            None | Some(-1) => Ok(None),
            // Device numbers are 12 (major) and 20 (minor) bits; i32 keeps
            // them positive as the program's sign-extended immediates.
            Some(n) if (0..=i64::from(i32::MAX)).contains(&n) => Ok(Some(n as u32)),
            Some(n) => Err(invalid(format!("{what} number {n} is out of range"))),
        };
        let access = rule.access().as_deref().unwrap_or("");
        if let Some(bad) = access.chars().find(|c| !"rwm".contains(*c)) {
            return Err(invalid(format!(
                "access {access:?} holds {bad:?}, not r, w or m"
            )));
        }
        let access: String = if access.is_empty() {
            "rwm".to_owned()
        } else {
            "rwm".chars().filter(|c| access.contains(*c)).collect()
        };
        Ok(Rule {
            allow: rule.allow(),
            kind,
            major: number(rule.major(), "major")?,
            minor: number(rule.minor(), "minor")?,
            access,
        })
    }

    /// The rule as a devices.allow / devices.deny line.
    fn v1_line(&self) -> String {
        let Some(kind) = self.kind else {
            return "a".to_owned();
        };
        let number = |n: Option<u32>| n.map_or("*".to_owned(), |n| n.to_string());
        format!(
            "{kind} {}:{} {}",
            number(self.major),
            number(self.minor),
            self.access
        )
    }
}

/// Applies `rules` in the v1 `devices` directory and as a program on the
/// unified directory, whichever exist.
pub(super) fn apply(
    v1_dir: Option<&Path>,
    unified: Option<&Path>,
    rules: &[LinuxDeviceCgroup],
) -> Result<(), CgroupsError> {
    let rules = rules
        .iter()
        .map(Rule::from_spec)
        .collect::<Result<Vec<_>, _>>()?;
    if v1_dir.is_none() && unified.is_none() {
        return Err(CgroupsError::Unsupported {
            what: "device rules",
            controller: "devices",
        });
    }
    if let Some(dir) = v1_dir {
        // Start from deny-all, as the program's default, then replay the rules.
        super::write(&dir.join("devices.deny"), "a")?;
        for rule in &rules {
            let file = if rule.allow {
                "devices.allow"
            } else {
                "devices.deny"
            };
            super::write(&dir.join(file), &rule.v1_line())?;
        }
    }
    if let Some(dir) = unified {
        match attach(dir, &rules) {
            Ok(()) => {}
            Err(_) if v1_dir.is_some() => {}
            Err(err) => return Err(err),
        }
    }
    Ok(())
}

/// Loads the program for `rules` and attaches it to `dir`, replacing the
/// programs attached there before (attached first, so no access slips
/// through between the two).
pub(super) fn attach(dir: &Path, rules: &[Rule]) -> Result<(), CgroupsError> {
    let insns = program(rules);
    let license = c"Apache-2.0";
    let load = |log: &mut [u8]| {
        bpf_prog::prog_load(
            bpf_prog::PROG_TYPE_CGROUP_DEVICE,
            bpf_prog::ATTACH_CGROUP_DEVICE,
            &insns,
            license,
            "alcove_devices",
            log,
        )
    };
    let prog = match load(&mut []) {
        Ok(prog) => prog,
        Err(source) => {
            // Load again with a log, only to say why the verifier refused.
            let mut log = vec![0u8; 64 * 1024];
            let _ = load(&mut log);
            let end = log.iter().position(|b| *b == 0).unwrap_or(log.len());
            let text = String::from_utf8_lossy(&log[..end]).trim().to_owned();
            return Err(CgroupsError::DeviceFilter {
                action: "load",
                log: if text.is_empty() {
                    String::new()
                } else {
                    format!(" (verifier: {text})")
                },
                source,
            });
        }
    };
    let filter_error = |action, source| CgroupsError::DeviceFilter {
        action,
        log: String::new(),
        source,
    };
    let cgroup = std::fs::File::open(dir).map_err(|e| filter_error("open the cgroup for", e))?;
    let old =
        bpf_prog::prog_query(cgroup.as_fd(), bpf_prog::ATTACH_CGROUP_DEVICE).unwrap_or_default();
    bpf_prog::prog_attach(
        cgroup.as_fd(),
        prog.as_fd(),
        bpf_prog::ATTACH_CGROUP_DEVICE,
        bpf_prog::F_ALLOW_MULTI,
    )
    .map_err(|e| filter_error("attach", e))?;
    for id in old {
        let old_prog = bpf_prog::prog_fd_by_id(id).map_err(|e| filter_error("replace", e))?;
        bpf_prog::prog_detach(
            cgroup.as_fd(),
            old_prog.as_fd(),
            bpf_prog::ATTACH_CGROUP_DEVICE,
        )
        .map_err(|e| filter_error("detach the old", e))?;
    }
    Ok(())
}

// Opcodes (class | size or operation | source) from the kernel's bpf.h.
const LDX_W: u8 = 0x61; // BPF_LDX | BPF_MEM | BPF_W
const AND32_K: u8 = 0x54; // BPF_ALU | BPF_AND | BPF_K
const RSH32_K: u8 = 0x74; // BPF_ALU | BPF_RSH | BPF_K
const MOV32_K: u8 = 0xb4; // BPF_ALU | BPF_MOV | BPF_K
const MOV32_X: u8 = 0xbc; // BPF_ALU | BPF_MOV | BPF_X
const JNE_K: u8 = 0x55; // BPF_JMP | BPF_JNE | BPF_K
const JNE_X: u8 = 0x5d; // BPF_JMP | BPF_JNE | BPF_X
const EXIT: u8 = 0x95; // BPF_JMP | BPF_EXIT

// struct bpf_cgroup_dev_ctx's encodings (uapi BPF_DEVCG_*).
const DEV_BLOCK: i32 = 1;
const DEV_CHAR: i32 = 2;
const ACC_MKNOD: i32 = 1;
const ACC_READ: i32 = 2;
const ACC_WRITE: i32 = 4;

/// The program for `rules`: R1 points at `struct bpf_cgroup_dev_ctx`
/// (`access_type` = access << 16 | type, then major, then minor); it
/// returns 1 to allow, 0 to deny.
pub(super) fn program(rules: &[Rule]) -> Vec<BpfInsn> {
    let mut insns = vec![
        BpfInsn::new(LDX_W, 2, 1, 0, 0),
        BpfInsn::new(AND32_K, 2, 0, 0, 0xffff), // R2: device type
        BpfInsn::new(LDX_W, 3, 1, 0, 0),
        BpfInsn::new(RSH32_K, 3, 0, 0, 16), // R3: access asked for
        BpfInsn::new(LDX_W, 4, 1, 4, 0),    // R4: major
        BpfInsn::new(LDX_W, 5, 1, 8, 0),    // R5: minor
    ];
    for rule in rules.iter().rev() {
        // Each test jumps past the rest of the block when it fails; the
        // offsets are filled in once the block's length is known.
        let mut block: Vec<BpfInsn> = Vec::new();
        let mut jumps: Vec<usize> = Vec::new();
        if let Some(kind) = rule.kind {
            let kind = if kind == 'b' { DEV_BLOCK } else { DEV_CHAR };
            jumps.push(block.len());
            block.push(BpfInsn::new(JNE_K, 2, 0, 0, kind));
            let mut access = 0;
            for (letter, bit) in [('m', ACC_MKNOD), ('r', ACC_READ), ('w', ACC_WRITE)] {
                if rule.access.contains(letter) {
                    access |= bit;
                }
            }
            if access != ACC_MKNOD | ACC_READ | ACC_WRITE {
                // Allowed when the access asked for is within the rule's.
                block.push(BpfInsn::new(MOV32_X, 1, 3, 0, 0));
                block.push(BpfInsn::new(AND32_K, 1, 0, 0, access));
                jumps.push(block.len());
                block.push(BpfInsn::new(JNE_X, 1, 3, 0, 0));
            }
            for (register, number) in [(4, rule.major), (5, rule.minor)] {
                if let Some(number) = number {
                    jumps.push(block.len());
                    block.push(BpfInsn::new(JNE_K, register, 0, 0, number as i32));
                }
            }
        }
        block.push(BpfInsn::new(MOV32_K, 0, 0, 0, i32::from(rule.allow)));
        block.push(BpfInsn::new(EXIT, 0, 0, 0, 0));
        let unconditional = jumps.is_empty();
        for at in jumps {
            // Rules hold at most five tests: the offset always fits.
            block[at].off = (block.len() - at - 1) as i16;
        }
        insns.extend(block);
        // Earlier rules are shadowed, and the verifier refuses code that
        // cannot be reached.
        if unconditional {
            return insns;
        }
    }
    insns.push(BpfInsn::new(MOV32_K, 0, 0, 0, 0));
    insns.push(BpfInsn::new(EXIT, 0, 0, 0, 0));
    insns
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn rule(allow: bool, typ: LinuxDeviceType, major: i64, minor: i64, access: &str) -> Rule {
        let mut spec = LinuxDeviceCgroup::default();
        spec.set_allow(allow)
            .set_typ(Some(typ))
            .set_major(Some(major))
            .set_minor(Some(minor))
            .set_access(Some(access.to_owned()));
        Rule::from_spec(&spec).unwrap()
    }

    #[test]
    fn v1_lines_use_stars_for_wildcards() {
        assert_eq!(
            rule(true, LinuxDeviceType::C, 1, 3, "rwm").v1_line(),
            "c 1:3 rwm"
        );
        assert_eq!(
            rule(true, LinuxDeviceType::B, -1, -1, "mr").v1_line(),
            "b *:* rm"
        );
        assert_eq!(rule(false, LinuxDeviceType::A, -1, -1, "").v1_line(), "a");
    }

    #[test]
    fn bad_rules_are_refused() {
        let mut spec = LinuxDeviceCgroup::default();
        spec.set_access(Some("rwx".into()));
        assert!(Rule::from_spec(&spec).is_err());
        spec.set_access(None).set_major(Some(-5));
        assert!(Rule::from_spec(&spec).is_err());
        spec.set_major(None).set_typ(Some(LinuxDeviceType::P));
        assert!(Rule::from_spec(&spec).is_err());
    }

    #[test]
    fn an_unconditional_rule_ends_the_program() {
        let rules = [
            rule(true, LinuxDeviceType::C, 1, 5, "rwm"),
            rule(false, LinuxDeviceType::A, -1, -1, "rwm"),
            rule(true, LinuxDeviceType::C, 1, 3, "rw"),
        ];
        let insns = program(&rules);
        // Prologue, the 1:3 block (type, 3 access, major, minor, mov, exit),
        // then deny-all; the 1:5 rule is shadowed and not emitted.
        assert_eq!(insns.len(), 6 + 8 + 2);
        assert_eq!(insns.last().unwrap().code, EXIT);
        assert_eq!(insns[insns.len() - 2].imm, 0);
        // Every jump lands inside the program.
        for (i, insn) in insns.iter().enumerate() {
            if insn.code == JNE_K || insn.code == JNE_X {
                assert!(i + 1 + (insn.off as usize) < insns.len());
            }
        }
    }

    /// A shell in a fresh cgroup2 directory with only /dev/zero allowed can
    /// write to /dev/zero and cannot open /dev/null.
    #[test]
    fn the_program_denies_what_no_rule_allows() {
        if !alcove_sys::process::is_root() {
            eprintln!("SKIPPED: needs root to load BPF programs and create cgroups");
            return;
        }
        let layout = alcove_cgroup::CgroupLayout::detect().unwrap();
        let Some(own) = layout.unified_own_dir else {
            eprintln!("SKIPPED: no cgroup2 hierarchy is mounted here");
            return;
        };
        let dir = super::super::path::v2_base(&own)
            .join(format!("alcove-oci-devtest-{}", std::process::id()));
        std::fs::create_dir(&dir).unwrap();
        let run = |target: &str| {
            Command::new("sh")
                .args([
                    "-c",
                    "echo $$ > \"$1/cgroup.procs\" && exec sh -c \"echo > $2\"",
                    "sh",
                ])
                .arg(&dir)
                .arg(target)
                .status()
                .unwrap()
                .success()
        };
        let zero_only = [rule(true, LinuxDeviceType::C, 1, 5, "rwm")];
        let attached = attach(&dir, &zero_only);
        let (zero, null) = (run("/dev/zero"), run("/dev/null"));
        // Replacing the program with allow-all lets /dev/null through again.
        let all = [rule(true, LinuxDeviceType::A, -1, -1, "rwm")];
        let replaced = attach(&dir, &all);
        let null_after = run("/dev/null");
        let _ = std::fs::remove_dir(&dir);
        attached.unwrap();
        replaced.unwrap();
        assert!(zero, "/dev/zero was refused");
        assert!(!null, "/dev/null was allowed");
        assert!(null_after, "/dev/null stayed refused after allow-all");
    }
}
