//! `alcove doctor`: what this kernel supports, and which mechanism alcove
//! uses here for each kind of rule.

use alcove_bpf::features::Feature;

fn line(name: &str, value: &str) {
    println!("  {name:<54} {value}");
}

fn yes_no(f: &Feature) -> String {
    match (f.available, f.detail.is_empty()) {
        (true, _) => "yes".into(),
        (false, true) => "no".into(),
        (false, false) => format!("no ({})", f.detail),
    }
}

pub fn run(json: bool) -> i32 {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let layout = alcove_cgroup::CgroupLayout::detect();
    let cgroups = match &layout {
        Ok(l) => match l.kind() {
            alcove_cgroup::LayoutKind::V2 => "v2 only".to_owned(),
            alcove_cgroup::LayoutKind::Hybrid => format!(
                "hybrid: v1 for {}; a cgroup2 tree at {}",
                l.v1.iter()
                    .flat_map(|h| h.controllers.clone())
                    .collect::<Vec<_>>()
                    .join(", "),
                l.unified_own_dir
                    .as_ref()
                    .map_or("?".into(), |d| d.display().to_string())
            ),
            alcove_cgroup::LayoutKind::V1 => {
                "v1 only (no cgroup2 tree: no cgroup ids for eBPF)".to_owned()
            }
        },
        Err(e) => format!("not usable: {e}"),
    };
    let landlock = alcove_sys::landlock::abi_version();
    let userns = std::fs::read_to_string("/proc/sys/user/max_user_namespaces").unwrap_or_default();
    let seccomp_actions =
        std::fs::read_to_string("/proc/sys/kernel/seccomp/actions_avail").unwrap_or_default();
    let bpf = alcove_bpf::features::probe();
    let has = |prefix: &str| {
        bpf.iter()
            .any(|f| f.name.starts_with(prefix) && f.available)
    };
    let lsm = has("BPF LSM programs") && has("BPF LSM enabled");
    let landlock_text = match &landlock {
        Ok(abi) => format!("Landlock ABI {abi}"),
        Err(e) => format!("unavailable ({e})"),
    };
    let path_rules = if lsm {
        format!("{landlock_text} (BPF LSM also loads here)")
    } else {
        format!("{landlock_text}; BPF LSM does not load here, so Landlock is the mechanism")
    };
    let mechanisms = [
        (
            "syscall classes (default policy, --policy)",
            "seccomp (classic BPF, built at build time)".to_owned(),
        ),
        (
            "syscall counts and budgets (--trace, --max-syscalls)",
            if has("BTF raw tracepoints") {
                "tp_btf raw_syscalls/sys_enter, attached only while asked".into()
            } else {
                "unavailable".into()
            },
        ),
        (
            "CPU and wall budgets (--cpu-budget, --wall-budget)",
            if has("perf_event programs") {
                "cpu-clock perf_event sampling every 1 ms".into()
            } else {
                "unavailable".into()
            },
        ),
        (
            "device rules (--devices)",
            if has("cgroup device") {
                "cgroup/dev program".into()
            } else {
                "unavailable".into()
            },
        ),
        (
            "network rules (--deny-net, --allow-net)",
            if has("cgroup sock_addr") {
                "cgroup/connect, sendmsg and bind programs".into()
            } else {
                "unavailable".into()
            },
        ),
        ("path rules (--allow-path)", path_rules),
    ];
    if json {
        let value = serde_json::json!({
            "kernel": kernel.trim(),
            "cgroups": cgroups,
            "landlock_abi": landlock.ok(),
            "user_namespaces_max": userns.trim().parse::<u64>().ok(),
            "seccomp_actions": seccomp_actions.split_whitespace().collect::<Vec<_>>(),
            "bpf": bpf,
            "mechanisms": mechanisms.iter().map(|(k, v)| serde_json::json!({"rule": k, "mechanism": v})).collect::<Vec<_>>(),
        });
        println!(
            "{}",
            serde_json::to_string_pretty(&value).expect("serialises")
        );
        return 0;
    }
    println!("kernel");
    line("release", kernel.trim());
    line("cgroups", &cgroups);
    line("Landlock", &landlock_text);
    line(
        "user namespaces",
        &format!("max {} (alcove does not use them)", userns.trim()),
    );
    line("seccomp actions", seccomp_actions.trim());
    println!("eBPF");
    for f in &bpf {
        line(f.name, &yes_no(f));
    }
    println!("what alcove uses here");
    for (rule, mechanism) in mechanisms {
        line(rule, &mechanism);
    }
    0
}
