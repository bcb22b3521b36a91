//! Root tests against the real cgroup hierarchies of the machine they run on.

use super::*;
use oci_spec::runtime::{
    LinuxCpuBuilder, LinuxDeviceCgroup, LinuxDeviceType, LinuxMemoryBuilder, LinuxPidsBuilder,
    LinuxResourcesBuilder,
};
use std::process::{Child, Command};

fn skip() -> bool {
    if !alcove_sys::process::is_root() {
        eprintln!("SKIPPED: needs root to create cgroups and move processes");
        return true;
    }
    false
}

fn unique(name: &str) -> String {
    format!(
        "{name}-{}-{}",
        std::process::id(),
        alcove_sys::process::random_id()
    )
}

/// Starts `command` with `sh`, which first moves itself into every
/// directory of `cgroup`, so what it execs is charged there from its start.
fn spawn_inside(cgroup: &ContainerCgroup, command: &str) -> Child {
    let mut script = String::new();
    for leaf in cgroup.leaves() {
        script.push_str(&format!("echo $$ > '{}/cgroup.procs' && ", leaf.display()));
    }
    script.push_str("exec ");
    script.push_str(command);
    Command::new("sh").arg("-c").arg(script).spawn().unwrap()
}

/// Waits until process `pid` has exec'd `comm`, that is, has joined every
/// directory first.
fn wait_for_exec(pid: u32, comm: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        let now = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if now.trim() == comm {
            return;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    panic!("process {pid} did not exec {comm}");
}

fn file(dir: &Path, name: &str) -> String {
    std::fs::read_to_string(dir.join(name))
        .unwrap_or_else(|e| panic!("{}: {e}", dir.join(name).display()))
        .trim()
        .to_owned()
}

#[test]
fn limits_processes_freezing_stats_and_removal() {
    if skip() {
        return;
    }
    let id = unique("life");
    let resources = LinuxResourcesBuilder::default()
        .memory(
            LinuxMemoryBuilder::default()
                .limit(64i64 << 20)
                .build()
                .unwrap(),
        )
        .pids(LinuxPidsBuilder::default().limit(32i64).build().unwrap())
        .cpu(
            LinuxCpuBuilder::default()
                .shares(512u64)
                .quota(50_000i64)
                .period(100_000u64)
                .cpus("0")
                .mems("0")
                .build()
                .unwrap(),
        )
        .build()
        .unwrap();
    let cg = ContainerCgroup::create(None, &id, false, Some(&resources)).unwrap();
    // Whatever happens below, the directories go.
    struct Cleanup<'a>(&'a ContainerCgroup);
    impl Drop for Cleanup<'_> {
        fn drop(&mut self) {
            let _ = self.0.destroy();
        }
    }
    let _cleanup = Cleanup(&cg);
    assert!(cg
        .leaves()
        .iter()
        .all(|d| d.ends_with(Path::new("alcove-oci").join(&id))));

    match cg.place("memory", "memory") {
        Place::V1(d) => assert_eq!(file(d, "memory.limit_in_bytes"), (64u64 << 20).to_string()),
        Place::V2(d) => assert_eq!(file(d, "memory.max"), (64u64 << 20).to_string()),
        Place::Absent => panic!("no memory controller"),
    }
    match cg.place("cpu", "cpu") {
        Place::V1(d) => {
            assert_eq!(file(d, "cpu.cfs_quota_us"), "50000");
            assert_eq!(file(d, "cpu.cfs_period_us"), "100000");
            assert_eq!(file(d, "cpu.shares"), "512");
        }
        Place::V2(d) => {
            assert_eq!(file(d, "cpu.max"), "50000 100000");
            assert_eq!(file(d, "cpu.weight"), "20");
        }
        Place::Absent => panic!("no cpu controller"),
    }
    match cg.place("cpuset", "cpuset") {
        Place::V1(d) | Place::V2(d) => assert_eq!(file(d, "cpuset.cpus"), "0"),
        Place::Absent => {}
    }
    let pids_dir = match cg.place("pids", "pids") {
        Place::V1(d) | Place::V2(d) => d.to_path_buf(),
        Place::Absent => panic!("no pids controller"),
    };
    assert_eq!(file(&pids_dir, "pids.max"), "32");

    // A process started inside, and one moved in after it started.
    let mut inside = spawn_inside(&cg, "sleep 30");
    let mut moved = Command::new("sleep").arg("30").spawn().unwrap();
    cg.add_process(moved.id() as i32).unwrap();
    let inside_pid = inside.id() as i32;
    wait_for_exec(inside.id(), "sleep");
    let pids = cg.pids().unwrap();
    assert!(pids.contains(&inside_pid), "{pids:?} lacks {inside_pid}");
    assert!(
        pids.contains(&(moved.id() as i32)),
        "{pids:?} lacks the moved process"
    );
    for leaf in cg.leaves() {
        assert!(file(&leaf, "cgroup.procs").contains(&moved.id().to_string()));
    }

    cg.freeze().unwrap();
    assert!(cg.is_frozen());
    // The kernel's own view, not our reading of it.
    match (cg.v1.get("freezer"), &cg.unified) {
        (Some(d), _) => assert_eq!(file(d, "freezer.state"), "FROZEN"),
        (None, Some(d)) => assert!(file(d, "cgroup.events").contains("frozen 1")),
        _ => unreachable!(),
    }
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", moved.id())).unwrap();
    let state = stat
        .rsplit(')')
        .next()
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap();
    assert_ne!(state, "R", "a frozen process is running");
    cg.thaw().unwrap();
    assert!(!cg.is_frozen());

    let stats = cg.stats();
    let usage = stats["memory"]["usage"]["usage"].as_u64().unwrap();
    assert!(usage > 0, "memory usage is 0 in {stats}");
    assert_eq!(stats["pids"]["current"].as_u64(), Some(2), "{stats}");
    assert_eq!(stats["pids"]["limit"].as_u64(), Some(32), "{stats}");
    assert!(stats["cpu"]["usage"].get("total").is_some(), "{stats}");

    let update = LinuxResourcesBuilder::default()
        .pids(LinuxPidsBuilder::default().limit(64i64).build().unwrap())
        .build()
        .unwrap();
    cg.update(&update).unwrap();
    assert_eq!(file(&pids_dir, "pids.max"), "64");
    assert_eq!(cg.oom_kills(), 0);

    // The state file keeps the cgroup; a copy read back manages it the same.
    let saved = serde_json::to_string(&cg).unwrap();
    let restored: ContainerCgroup = serde_json::from_str(&saved).unwrap();
    assert_eq!(restored.leaves(), cg.leaves());

    // Signals other than SIGKILL go process by process.
    restored.kill_all(libc::SIGTERM);
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(inside.wait().unwrap().signal(), Some(libc::SIGTERM));
    assert_eq!(moved.wait().unwrap().signal(), Some(libc::SIGTERM));

    // The unified tree's own freezer works beside v1's on a hybrid host.
    let mut last = spawn_inside(&cg, "sleep 30");
    if let Some(dir) = &cg.unified {
        v2::set_frozen(dir, true).unwrap();
        assert!(file(dir, "cgroup.events").contains("frozen 1"));
        v2::set_frozen(dir, false).unwrap();
        assert!(file(dir, "cgroup.events").contains("frozen 0"));
    }
    // A paused container is still removed: its processes are killed.
    wait_for_exec(last.id(), "sleep");
    cg.freeze().unwrap();
    restored.destroy().unwrap();
    assert_eq!(last.wait().unwrap().signal(), Some(libc::SIGKILL));
    for leaf in cg.leaves() {
        assert!(!leaf.exists(), "{} is still there", leaf.display());
    }
}

#[test]
fn a_container_cannot_open_a_device_no_rule_allows() {
    if skip() {
        return;
    }
    let rule = |allow: bool, typ, major: Option<i64>, minor: Option<i64>| {
        let mut r = LinuxDeviceCgroup::default();
        r.set_allow(allow)
            .set_typ(Some(typ))
            .set_major(major)
            .set_minor(minor)
            .set_access(Some("rwm".into()));
        r
    };
    let resources = LinuxResourcesBuilder::default()
        .devices(vec![
            rule(false, LinuxDeviceType::A, None, None),
            rule(true, LinuxDeviceType::C, Some(1), Some(5)),
        ])
        .build()
        .unwrap();
    let id = unique("dev");
    let cg = ContainerCgroup::create(
        Some(&format!("/alcove-oci-test-{id}/ctr")),
        &id,
        false,
        Some(&resources),
    )
    .unwrap();
    let zero = spawn_inside(&cg, "sh -c 'echo > /dev/zero'")
        .wait()
        .unwrap();
    let null = spawn_inside(&cg, "sh -c 'echo > /dev/null'")
        .wait()
        .unwrap();
    let list = cg.v1.get("devices").map(|d| file(d, "devices.list"));
    cg.destroy().unwrap();
    assert!(zero.success(), "/dev/zero was refused");
    assert!(!null.success(), "/dev/null was allowed");
    if let Some(list) = list {
        assert_eq!(list, "c 1:5 rwm");
    }
    assert!(cg.leaves().iter().all(|d| !d.exists()));
    // The parent this container made went with it.
    for leaf in cg.leaves() {
        let parent = leaf.parent().unwrap();
        assert!(!parent.exists(), "{} was left behind", parent.display());
    }
}

#[test]
fn paths_that_leave_the_base_are_refused() {
    for bad in ["../x", "a/../../b", "/a/../../b", "a//b"] {
        let err = ContainerCgroup::create(Some(bad), "x", false, None).unwrap_err();
        assert!(
            matches!(err, CgroupsError::InvalidPath { .. }),
            "{bad:?}: {err}"
        );
    }
    let err = ContainerCgroup::create(Some("m.slice:p:a/../../b"), "x", true, None).unwrap_err();
    assert!(matches!(err, CgroupsError::InvalidPath { .. }), "{err}");
}

#[test]
fn a_limit_the_spec_cannot_mean_is_refused_and_leaves_nothing() {
    if skip() {
        return;
    }
    let id = unique("bad");
    let resources = LinuxResourcesBuilder::default()
        .memory(LinuxMemoryBuilder::default().limit(-7i64).build().unwrap())
        .build()
        .unwrap();
    let path = format!("alcove-oci-test-{id}/leaf");
    let err = ContainerCgroup::create(Some(&path), &id, false, Some(&resources)).unwrap_err();
    assert!(matches!(err, CgroupsError::Invalid { .. }), "{err}");
    let layout = alcove_cgroup::CgroupLayout::detect().unwrap();
    for h in &layout.v1 {
        let top = h.own_dir.join(format!("alcove-oci-test-{id}"));
        assert!(!top.exists(), "{} was left behind", top.display());
    }
}
