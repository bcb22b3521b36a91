//! Nothing is left behind: not after many runs, not by daemons, not when alcove
//! itself is killed; and what the pool keeps is bounded and removable.

mod common;
use common::*;
use std::time::Duration;

/// alcove's bounded, reusable pieces: pool slots and template namespaces.
fn is_pooled(mount_point: &str) -> bool {
    mount_point.starts_with("/run/alcove/pool/")
        || mount_point.starts_with("/run/alcove/templates/")
}

/// Kills a started alcove if the test fails before it does.
struct KillOnDrop(u32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        // SAFETY: kill on the pid of a child this test started and has not reaped.
        unsafe { libc::kill(self.0 as i32, libc::SIGKILL) };
    }
}

#[test]
fn two_hundred_runs_leave_nothing_behind() {
    if !root_or_skip("two_hundred_runs_leave_nothing_behind") {
        return;
    }
    let _g = serial();
    // Warm the pool and the template first so what they keep is already there.
    assert_eq!(alcove(&["run", "--", "true"]).status.code(), Some(0));
    let mounts_before: Vec<String> = host_mounts()
        .into_iter()
        .filter(|m| !is_pooled(m))
        .collect();
    let cgroups_before = alcove_cgroups();
    let namespaces_before = live_namespaces(65534);
    for i in 0..200 {
        let args = [
            "run",
            "--memory",
            "64M",
            "--pids",
            "32",
            "--cpus",
            "1",
            "--",
            "sh",
            "-c",
            "echo x > /tmp/x; sleep 0 &",
        ];
        let out = alcove(&args);
        assert_eq!(
            out.status.code(),
            Some(0),
            "run {i}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let mounts_after: Vec<String> = host_mounts()
        .into_iter()
        .filter(|m| !is_pooled(m))
        .collect();
    assert_eq!(mounts_before, mounts_after, "mounts changed");
    let pooled = host_mounts().into_iter().filter(|m| is_pooled(m)).count();
    assert!(
        pooled <= 16 + 64,
        "the pool and templates are bounded: {pooled}"
    );
    let cgroups_after = alcove_cgroups();
    assert_eq!(cgroups_before, cgroups_after, "cgroups changed");
    assert!(cgroups_after.iter().all(|d| d
        .file_name()
        .unwrap()
        .to_string_lossy()
        .starts_with("slot-")));
    let new: Vec<String> = live_namespaces(65534)
        .into_iter()
        .filter(|n| !namespaces_before.contains(n))
        .collect();
    assert!(
        new.is_empty(),
        "namespaces still held by processes: {new:?}"
    );
    for dir in &cgroups_after {
        let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap();
        assert!(
            procs.trim().is_empty(),
            "{} still has processes: {procs}",
            dir.display()
        );
    }
}

#[test]
fn daemons_that_try_to_outlive_the_program_die_with_it() {
    if !root_or_skip("daemons_that_try_to_outlive_the_program_die_with_it") {
        return;
    }
    let _g = serial();
    let marker = "31337.25";
    let script = format!("setsid sleep {marker} </dev/null >/dev/null 2>&1 & nohup sleep {marker} >/dev/null 2>&1 & echo started");
    let run = sandbox(&[], &["sh", "-c", &script]);
    assert_eq!(run.stdout, "started\n", "{run:?}");
    assert!(
        processes_with(&format!("sleep {marker}")).is_empty(),
        "a daemon outlived its sandbox"
    );
}

#[test]
fn killing_alcove_mid_run_kills_the_sandbox_and_frees_its_pieces() {
    if !root_or_skip("killing_alcove_mid_run_kills_the_sandbox_and_frees_its_pieces") {
        return;
    }
    let _g = serial();
    let mounts_before: Vec<String> = host_mounts()
        .into_iter()
        .filter(|m| !is_pooled(m))
        .collect();
    let marker = "4242.125";
    let mut child = std::process::Command::new(ALCOVE)
        .args([
            "run",
            "--memory",
            "64M",
            "--",
            "sh",
            "-c",
            &format!("sleep {marker} & sleep {marker}"),
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    let guard = KillOnDrop(pid);
    wait_until("the sandbox runs", Duration::from_secs(5), || {
        processes_with(&format!("sleep {marker}")).len() == 2
    });
    child.kill().unwrap(); // SIGKILL: no cleanup code in alcove runs
    child.wait().unwrap();
    std::mem::forget(guard); // reaped: its pid is no longer ours to signal
    wait_until("the sandbox is gone", Duration::from_secs(2), || {
        processes_with(&format!("sleep {marker}")).is_empty()
    });
    let mounts_after: Vec<String> = host_mounts()
        .into_iter()
        .filter(|m| !is_pooled(m))
        .collect();
    assert_eq!(mounts_before, mounts_after);
    // The next run takes over the slot the killed run held, and it is clean.
    let run = sandbox(
        &["--memory", "64M"],
        &["sh", "-c", "cat /proc/self/cgroup | wc -l"],
    );
    assert_eq!(run.code, 0, "{run:?}");
    assert!(alcove_cgroups().iter().all(|d| d
        .file_name()
        .unwrap()
        .to_string_lossy()
        .starts_with("slot-")));
}

/// Creates its file when dropped: the barrier's release, even when the
/// test fails first, so no sandbox waits forever.
struct Release(std::path::PathBuf);

impl Drop for Release {
    fn drop(&mut self) {
        let _ = std::fs::write(&self.0, "");
    }
}

#[test]
fn concurrent_runs_beyond_the_pool_use_fresh_pieces_and_clean_them_up() {
    if !root_or_skip("concurrent_runs_beyond_the_pool_use_fresh_pieces_and_clean_them_up") {
        return;
    }
    let _g = serial();
    const RUNS: usize = 24;
    let cgroups_before = alcove_cgroups();
    // A barrier: each run says it started, then waits for the go file, so
    // all of them are alive at once and the pool cannot serve them all.
    let shared = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        shared.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    let release = Release(shared.path().join("go"));
    let bind = format!("{}:/shared:rw", shared.path().display());
    let children: Vec<_> = (0..RUNS)
        .map(|i| {
            let script = format!(
                "touch /shared/started-{i}; while [ ! -e /shared/go ]; do sleep 0.02; done; echo {i}"
            );
            std::process::Command::new(ALCOVE)
                .args([
                    "run",
                    "--hostname",
                    "c",
                    "--timeout",
                    "120s",
                    "--bind",
                    &bind,
                    "--",
                    "sh",
                    "-c",
                    &script,
                ])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let started = || {
        std::fs::read_dir(shared.path())
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("started-"))
            .count()
    };
    wait_until(
        "every run is inside its sandbox at once",
        Duration::from_secs(60),
        || started() == RUNS,
    );
    let fresh: Vec<_> = alcove_cgroups()
        .into_iter()
        .filter(|d| !cgroups_before.contains(d))
        .filter(|d| d.file_name().unwrap().to_string_lossy().starts_with("sb-"))
        .collect();
    drop(release);
    let outputs: Vec<_> = children
        .into_iter()
        .map(|c| c.wait_with_output().unwrap())
        .collect();
    for (i, out) in outputs.iter().enumerate() {
        assert!(
            out.status.success(),
            "run {i}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout), format!("{i}\n"));
    }
    // Each fresh run has a directory per hierarchy it uses, so count owners.
    let owners: std::collections::BTreeSet<String> = fresh
        .iter()
        .map(|d| d.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert!(
        owners.len() >= RUNS - alcove_sandbox::POOL_SLOTS,
        "{RUNS} runs at once with {} pool slots, but only {} fresh cgroups: {fresh:?}",
        alcove_sandbox::POOL_SLOTS,
        owners.len()
    );
    let extra: Vec<_> = alcove_cgroups()
        .into_iter()
        .filter(|d| !cgroups_before.contains(d))
        .collect();
    assert!(
        extra.iter().all(|d| d
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("slot-")),
        "only pool slots may remain: {extra:?}"
    );
}

#[test]
fn gc_removes_the_pool_and_templates() {
    if !root_or_skip("gc_removes_the_pool_and_templates") {
        return;
    }
    let _g = serial();
    assert_eq!(alcove(&["run", "--", "true"]).status.code(), Some(0));
    assert!(host_mounts().iter().any(|m| is_pooled(m)));
    let out = alcove(&["gc"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !host_mounts().iter().any(|m| is_pooled(m)),
        "gc left pooled mounts"
    );
    assert!(
        alcove_cgroups().is_empty(),
        "gc left cgroups: {:?}",
        alcove_cgroups()
    );
    // And alcove works from a clean slate.
    assert_eq!(alcove(&["run", "--", "true"]).status.code(), Some(0));
}

/// The directory of this test's delegated cgroup in the unified (cgroup2)
/// tree: its own, or the parent of the `supervisor` leaf it runs in (as under
/// systemd's DelegateSubgroup=), where new cgroups can get controllers.
fn own_unified_dir() -> Option<std::path::PathBuf> {
    let text = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let path = text.lines().find_map(|l| l.strip_prefix("0::"))?;
    let leaf = format!("/{}", alcove_cgroup::LEAF);
    let path = path.strip_suffix(leaf.as_str()).unwrap_or(path);
    let mount = ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"]
        .into_iter()
        .map(std::path::Path::new)
        .find(|m| m.join("cgroup.controllers").exists())?;
    Some(mount.join(path.trim_start_matches('/')))
}

/// A new cgroup beneath `own`, given what `own` was given (as systemd does
/// for a unit; on cgroup v2, the hybrid layout's tree offers none of these).
fn delegated_child(own: &std::path::Path, name: &str) -> std::path::PathBuf {
    let offered = std::fs::read_to_string(own.join("cgroup.controllers")).unwrap_or_default();
    for controller in ["cpu", "memory", "pids"] {
        if offered.split_whitespace().any(|c| c == controller) {
            std::fs::write(own.join("cgroup.subtree_control"), format!("+{controller}")).unwrap();
        }
    }
    let dir = own.join(format!("{name}-{}", std::process::id()));
    std::fs::create_dir(&dir).unwrap();
    dir
}

/// [`own_unified_dir`], or `None` after saying why the test is skipped.
fn own_unified_dir_or_skip(test: &str) -> Option<std::path::PathBuf> {
    let own = own_unified_dir();
    if own.is_none() {
        skip_machine(test, "no cgroup2 tree is mounted here");
    }
    own
}

/// Removes a [`delegated_child`] and what a run there left: its pooled slot,
/// alcove's parent, and (cgroup v2) the leaf alcove moved itself into.
fn remove_child(dir: &std::path::Path) {
    for inner in ["alcove/slot-0", "alcove", alcove_cgroup::LEAF] {
        let _ = std::fs::remove_dir(dir.join(inner));
    }
    std::fs::remove_dir(dir).unwrap();
}

/// `alcove run -- true` started in the cgroup `dir`.
fn run_true_in(dir: &std::path::Path) -> std::process::Output {
    let script = format!(
        "echo $$ > {}/cgroup.procs && exec {ALCOVE} run -- true",
        dir.display()
    );
    std::process::Command::new("sh")
        .args(["-c", &script])
        .output()
        .unwrap()
}

#[test]
fn a_slot_claimed_from_another_cgroup_removes_what_it_left_in_the_first() {
    let test = "a_slot_claimed_from_another_cgroup_removes_what_it_left_in_the_first";
    if !root_or_skip(test) {
        return;
    }
    let _g = serial();
    let Some(own) = own_unified_dir_or_skip(test) else {
        return;
    };
    // Every slot free and gone, so both runs below claim slot 0.
    assert_eq!(alcove(&["gc"]).status.code(), Some(0));
    let elsewhere = delegated_child(&own, "alcove-place-test");
    let out = run_true_in(&elsewhere);
    let left_there = elsewhere.join("alcove/slot-0");
    let claimed_there = out.status.success() && left_there.is_dir();
    // Then from here: the slot's pieces in the other cgroup must go.
    assert_eq!(alcove(&["run", "--", "true"]).status.code(), Some(0));
    let still_there = left_there.exists();
    remove_child(&elsewhere);
    assert!(
        claimed_there,
        "the run from the other cgroup: {out:?}, slot dir there: {}",
        left_there.display()
    );
    assert!(!still_there, "{} was left behind", left_there.display());
}

#[test]
fn gc_from_here_removes_what_a_dead_run_left_in_another_cgroup() {
    let test = "gc_from_here_removes_what_a_dead_run_left_in_another_cgroup";
    if !root_or_skip(test) {
        return;
    }
    let _g = serial();
    let Some(own) = own_unified_dir_or_skip(test) else {
        return;
    };
    let elsewhere = delegated_child(&own, "alcove-gc-place-test");
    // An alcove started there makes (and records) its parent cgroup there.
    let out = run_true_in(&elsewhere);
    let parent = elsewhere.join("alcove");
    let made_there = out.status.success() && parent.is_dir();
    // A run whose alcove died there: its cgroup, named for a pid that is gone.
    let dead = (4_000_000..4_100_000)
        .find(|pid| !std::path::Path::new(&format!("/proc/{pid}")).exists())
        .unwrap();
    let orphan = parent.join(format!("sb-{dead}-1-0"));
    let orphan_made = made_there && std::fs::create_dir(&orphan).is_ok();
    let listed = std::fs::read_to_string(alcove_cgroup::PLACES_FILE)
        .unwrap_or_default()
        .lines()
        .any(|l| std::path::Path::new(l) == parent);
    // gc from this cgroup, not that one.
    let gc = alcove(&["gc"]);
    let orphan_left = orphan.exists();
    let parent_left = parent.exists();
    let _ = std::fs::remove_dir(&orphan);
    remove_child(&elsewhere);
    assert!(made_there && orphan_made, "the run there: {out:?}");
    assert!(
        listed,
        "{} is not in {}",
        parent.display(),
        alcove_cgroup::PLACES_FILE
    );
    assert_eq!(gc.status.code(), Some(0), "{gc:?}");
    assert!(
        !orphan_left,
        "gc left the dead run's cgroup {}",
        orphan.display()
    );
    assert!(
        !parent_left,
        "gc left the empty parent {}",
        parent.display()
    );
}
