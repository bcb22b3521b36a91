//! alcove taking charge of a delegated cgroup on the real unified hierarchy:
//! moving itself into its leaf when its cgroup holds it, refusing with the
//! real cause when other processes share the cgroup or a controller is
//! withheld. It uses whichever controller the unified hierarchy offers (only
//! hugetlb on the hybrid development machines; cpu, memory, pids on v2 hosts),
//! because the no-internal-process rule is the same for every controller.
//!
//! One test function: it moves this whole test process between cgroups.

use alcove_cgroup::delegation::enable_named_for_children;
use alcove_cgroup::{CgroupError, CgroupLayout, DelegationError, LEAF};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};

fn own_cgroup_line() -> String {
    let text = std::fs::read_to_string("/proc/self/cgroup").unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .unwrap_or_default()
        .to_owned()
}

fn move_pid(dir: &Path, pid: u32) {
    std::fs::write(dir.join("cgroup.procs"), pid.to_string())
        .unwrap_or_else(|e| panic!("moving {pid} into {}: {e}", dir.display()));
}

fn words(path: PathBuf) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

/// Undoes everything on every path out of the test, failures included.
struct Cleanup {
    home: PathBuf,
    dirs: Vec<PathBuf>,
    children: Vec<Child>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = std::fs::write(
            self.home.join("cgroup.procs"),
            std::process::id().to_string(),
        );
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        for dir in self.dirs.iter().rev() {
            let _ = std::fs::remove_dir(dir.join(LEAF));
            let _ = std::fs::remove_dir(dir);
        }
    }
}

#[test]
fn alcove_takes_charge_of_its_cgroup_or_names_the_real_obstacle() {
    if !alcove_sys::process::is_root() {
        eprintln!("SKIPPED: needs root to create cgroups and move processes");
        return;
    }
    let layout = CgroupLayout::detect().unwrap();
    let Some(home) = layout.unified_own_dir.clone() else {
        eprintln!("SKIPPED: no cgroup2 hierarchy is mounted here");
        return;
    };
    // Our test cgroups go beneath our own; they can use a controller only if
    // our own cgroup already enables one for its children, or is the root.
    let is_root = !home.join("cgroup.type").exists();
    let enabled = words(home.join("cgroup.subtree_control"));
    let mut enabled_here = None;
    let controller = match enabled.first() {
        Some(c) => c.clone(),
        None if is_root => match words(home.join("cgroup.controllers")).first() {
            Some(c) => {
                std::fs::write(home.join("cgroup.subtree_control"), format!("+{c}")).unwrap();
                enabled_here = Some(c.clone());
                c.clone()
            }
            None => {
                eprintln!("SKIPPED: the unified hierarchy offers no controller at all");
                return;
            }
        },
        None => {
            eprintln!(
                "SKIPPED: {} enables no controller for its children and is not the root",
                home.display()
            );
            return;
        }
    };
    let base = home.join(format!("alcove-delegation-test-{}", std::process::id()));
    let mut cleanup = Cleanup {
        home: home.clone(),
        dirs: Vec::new(),
        children: Vec::new(),
    };
    let make = |cleanup: &mut Cleanup, name: &str| {
        let dir = base.join(name);
        std::fs::create_dir(&dir).unwrap();
        cleanup.dirs.push(dir.clone());
        dir
    };
    std::fs::create_dir(&base).unwrap();
    cleanup.dirs.push(base.clone());
    std::fs::write(
        base.join("cgroup.subtree_control"),
        format!("+{controller}"),
    )
    .unwrap();

    // 1. Alone in a delegated cgroup: alcove moves into the leaf and enables.
    let alone = make(&mut cleanup, "alone");
    move_pid(&alone, std::process::id());
    enable_named_for_children(&alone, &[controller.as_str()]).unwrap();
    assert!(
        words(alone.join("cgroup.subtree_control")).contains(&controller),
        "{controller} was not enabled below {}",
        alone.display()
    );
    assert!(
        own_cgroup_line().ends_with(&format!("/alone/{LEAF}")),
        "alcove did not move into its leaf: {}",
        own_cgroup_line()
    );
    // A later look at the layout sees the delegated cgroup, not the leaf.
    let seen = CgroupLayout::detect().unwrap();
    assert_eq!(seen.unified_own_dir.as_deref(), Some(alone.as_path()));
    // Enabled already: nothing to do, nothing moves.
    enable_named_for_children(&alone, &[controller.as_str()]).unwrap();

    // 2. Sharing the cgroup with another process: refused, naming it, and
    //    alcove is back where it was with no leaf left behind.
    let shared = make(&mut cleanup, "shared");
    let sleeper = Command::new("sleep").arg("60").spawn().unwrap();
    let sleeper_pid = sleeper.id();
    cleanup.children.push(sleeper);
    move_pid(&shared, sleeper_pid);
    move_pid(&shared, std::process::id());
    let err = enable_named_for_children(&shared, &[controller.as_str()]).unwrap_err();
    match &err {
        CgroupError::Delegation(DelegationError::SharedCgroup { others, .. }) => {
            assert!(
                others.contains(&format!("sleep {sleeper_pid}")),
                "the other process is not named: {others}"
            );
        }
        other => panic!("expected a shared-cgroup refusal, got: {other}"),
    }
    assert!(err
        .to_string()
        .contains("systemd-run --scope -p Delegate=yes"));
    assert!(
        own_cgroup_line().ends_with("/shared"),
        "{}",
        own_cgroup_line()
    );
    assert!(!shared.join(LEAF).exists(), "a refused start left its leaf");
    assert!(words(shared.join("cgroup.subtree_control")).is_empty());

    // 3. A controller the parent withholds: named as such, nothing moves.
    let withheld = make(&mut cleanup, "withheld");
    let absent = ["memory", "pids", "cpu", "io"]
        .into_iter()
        .find(|c| {
            !words(withheld.join("cgroup.controllers"))
                .iter()
                .any(|w| w == c)
        })
        .expect("some controller is not delegated to a fresh child");
    let err = enable_named_for_children(&withheld, &[absent])
        .unwrap_err()
        .to_string();
    assert!(err.contains(&format!("{absent} is not delegated")), "{err}");
    assert!(!withheld.join(LEAF).exists());
    drop(cleanup);
    assert!(!base.exists(), "the test's cgroups were not removed");
    if let Some(c) = enabled_here {
        let _ = std::fs::write(home.join("cgroup.subtree_control"), format!("-{c}"));
    }
}
