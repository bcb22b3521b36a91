//! `alcove doctor`: what this kernel supports, and which mechanism alcove
//! uses here for each kind of rule.

use alcove_bpf::features::Feature;

fn line(name: &str, value: &str) {
    println!("  {name:<54} {value}");
}

/// Whether a process moved into a cgroup (a warm copy, a fork with memory)
/// waits for an RCU grace period first (alcove_cgroup::migrations).
fn migrations() -> String {
    use alcove_cgroup::MigrationCost;
    match alcove_cgroup::migrations::migration_cost() {
        Err(e) => format!("unknown: {e}"),
        Ok(MigrationCost::NoCgroup2) => {
            "each waits for an RCU grace period (no cgroup2 tree to mount favordynmods)".into()
        }
        Ok(MigrationCost::Fast { mount }) => format!(
            "fast: the cgroup tree at {} is mounted favordynmods",
            mount.display()
        ),
        Ok(MigrationCost::Slow { mount }) => format!(
            "each waits for an RCU grace period (15-17 ms measured on the development machine); \
             `alcove serve` mounts {} favordynmods at start (--no-favordynmods leaves it), and a \
             move then takes ~0.3 ms (forks and exits of every process take a plain lock instead \
             of a per-CPU one)",
            mount.display()
        ),
    }
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
    let delegation = layout.as_ref().ok().and_then(delegation);
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
        format!(
            "{landlock_text}; BPF LSM is active here too, and Landlock stays the mechanism \
             (README: cgroup v2 hosts and systemd)"
        )
    } else if has("BPF LSM programs") {
        format!(
            "{landlock_text}; BPF LSM programs load but bpf is not in lsm=, so Landlock is \
             the mechanism"
        )
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
            "CPU budgets (--cpu-budget; --wall-budget is the timeout)",
            if has("perf_event programs") {
                "each task's run time, checked by a cpu-clock perf_event every 1 ms".into()
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
        (
            "agent sandboxes' outbound network (--net outbound)",
            alcove_engine::sandboxes::network::readiness(),
        ),
        (
            "moving a process between cgroups (warm copies, forks with memory)",
            migrations(),
        ),
    ];
    let daemon = daemon_monitor();
    let gvisor = gvisor();
    if json {
        let value = serde_json::json!({
            "daemon_monitor": daemon,
            "kernel": kernel.trim(),
            "cgroups": cgroups,
            "cgroup_delegation": delegation.as_ref().map(|(check, verdict)| serde_json::json!({
                "cgroup": check.dir,
                "is_root": check.is_root,
                "available": check.available,
                "enabled_for_children": check.enabled,
                "other_processes": check.other_processes.len(),
                "ok": verdict.is_ok(),
                "verdict": verdict.as_ref().unwrap_or_else(|e| e),
            })),
            "landlock_abi": landlock.ok(),
            "user_namespaces_max": userns.trim().parse::<u64>().ok(),
            "seccomp_actions": seccomp_actions.split_whitespace().collect::<Vec<_>>(),
            "bpf": bpf,
            "gvisor": gvisor,
            "mechanisms": mechanisms.iter().map(|(k, v)| serde_json::json!({"rule": k, "mechanism": v})).collect::<Vec<_>>(),
        });
        println!(
            "{}",
            serde_json::to_string_pretty(&value).expect("serialises")
        );
        return exit_code(&delegation);
    }
    println!("kernel");
    line("release", kernel.trim());
    line("cgroups", &cgroups);
    if let Some((check, verdict)) = &delegation {
        line("cgroup v2 delegation", &check.dir.display().to_string());
        line("  controllers available", &check.available.join(" "));
        line("  enabled for children", &check.enabled.join(" "));
        match verdict {
            Ok(text) => line("  verdict", &format!("ok: {text}")),
            Err(text) => line("  verdict", &format!("PROBLEM: {text}")),
        }
    }
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
    println!("isolation tiers (--isolation)");
    line("container", "yes (the default)");
    line("gvisor", &gvisor_text(&gvisor));
    println!("functions daemon ($ALCOVE_SERVER or the local one)");
    line("eBPF monitor", &daemon_text(&daemon));
    exit_code(&delegation)
}

/// Whether runsc is installed and which of gVisor's platforms start a
/// sandbox here (each tried for real).
fn gvisor() -> serde_json::Value {
    match alcove_gvisor::Runsc::find() {
        Err(e) => serde_json::json!({"installed": false, "error": e.to_string()}),
        Ok(runsc) => {
            let platforms: Vec<serde_json::Value> = alcove_gvisor::platforms(&runsc)
                .into_iter()
                .map(|(name, works, why)| serde_json::json!({"platform": name, "works": works, "why_not": why}))
                .collect();
            serde_json::json!({
                "installed": true,
                "runsc": runsc.path,
                "version": runsc.version(),
                "platform_used": runsc.platform,
                "platforms": platforms,
            })
        }
    }
}

fn gvisor_text(v: &serde_json::Value) -> String {
    if v["installed"] != true {
        return format!("no: {}", v["error"].as_str().unwrap_or("runsc is missing"));
    }
    let platforms: Vec<String> = v["platforms"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            let name = p["platform"].as_str().unwrap_or("?");
            match p["works"] == true {
                true => format!("{name} works"),
                false => format!("{name} does not ({})", p["why_not"].as_str().unwrap_or("?")),
            }
        })
        .collect();
    format!(
        "{} ({}), using {}; {}",
        v["runsc"].as_str().unwrap_or("runsc"),
        v["version"].as_str().unwrap_or("version unknown"),
        v["platform_used"].as_str().unwrap_or("ptrace"),
        platforms.join("; ")
    )
}

/// What the daemon (`$ALCOVE_SERVER`, or the local one) says of its eBPF
/// monitor: loaded or not, and which per-syscall programs are attached now.
fn daemon_monitor() -> serde_json::Value {
    let answer = crate::functions::connect_waiting(&Default::default(), false)
        .and_then(|client| Ok(client.monitor()?));
    match answer {
        Ok(v) => v,
        Err(e) => serde_json::json!({ "unreachable": format!("{e:#}") }),
    }
}

fn daemon_text(v: &serde_json::Value) -> String {
    if let Some(why) = v["unreachable"].as_str() {
        return format!("no daemon answered ({why})");
    }
    if v["loaded"] != true {
        return match v["error"].as_str() {
            Some(e) => format!("not loaded: {e}"),
            None => "not loaded (--monitor off, and no function needed it yet)".into(),
        };
    }
    let s = &v["status"];
    let on = |k: &str| {
        if s["attached"][k] == true {
            "attached"
        } else {
            "detached"
        }
    };
    format!(
        "loaded; watching {} sandboxes; sys_enter {}, sys_exit {}, cpu sampling {} \
         (the per-syscall programs tax every syscall on the host while attached)",
        s["watched"].as_u64().unwrap_or(0),
        on("sys_enter"),
        on("sys_exit"),
        on("cpu_ticks"),
    )
}

type Delegation = (alcove_cgroup::DelegationCheck, Result<String, String>);

/// How alcove's cgroup on the unified hierarchy stands, where that hierarchy
/// holds a controller alcove limits with (on hybrid hosts the v1 hierarchies
/// hold them and no delegation is needed).
fn delegation(layout: &alcove_cgroup::CgroupLayout) -> Option<Delegation> {
    let own = layout.unified_own_dir.as_ref()?;
    let wanted: Vec<&str> = ["cpu", "memory", "pids"]
        .into_iter()
        .filter(|c| layout.v1_for(c).is_none())
        .collect();
    if wanted.is_empty() {
        return None;
    }
    let check = alcove_cgroup::DelegationCheck::inspect(own);
    let verdict = match check.verdict(&wanted) {
        Err(_) if check.undelegated(&wanted).is_empty() && crate::scope::systemd_runs() => Ok(
            "shared with other processes: `alcove run` and `alcove serve` ask systemd for a \
             delegated scope of their own (systemd-run --scope -p Delegate=yes) and run there"
                .to_owned(),
        ),
        verdict => verdict,
    };
    Some((check, verdict))
}

/// 1 when alcove cannot make cgroups for its sandboxes here.
fn exit_code(delegation: &Option<Delegation>) -> i32 {
    match delegation {
        Some((_, Err(_))) => 1,
        _ => 0,
    }
}
