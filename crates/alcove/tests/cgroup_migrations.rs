//! The daemon mounts the cgroup2 tree `favordynmods` at start, so that
//! moving a process into a cgroup (a warm copy, a fork with memory) does not
//! wait for an RCU grace period, and keeps the tree's other options
//! (systemd's `nsdelegate` and `memory_recursiveprot` on a v2 host: the
//! kernel clears every cgroup2 option a reconfiguration leaves out);
//! `--no-favordynmods` leaves the tree alone. The option is global: the test
//! turns it off first, so that the daemon's start really changes it, and puts
//! back what it found. A running daemon puts the option back after a new
//! cgroup2 mount (what a container runtime makes for a container sharing the
//! host's cgroup namespace) has cleared it.

mod common;

use common::daemon::{Daemon, FAVORDYNMODS_AS_SERVED};
use std::io::Write;

const FAVOR: &str = "favordynmods";

/// The first cgroup2 mount's point, its own flags and its superblock
/// options, read from mountinfo here rather than through the library under
/// test.
fn cgroup2_options() -> Option<(String, String, Vec<String>)> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    text.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        let mut right = right.split(' ');
        if right.next()? != "cgroup2" {
            return None;
        }
        let options = right.nth(1)?.split(',').map(str::to_owned).collect();
        let mut left = left.split(' ');
        let point = left.nth(4)?.to_owned();
        Some((point, left.next()?.to_owned(), options))
    })
}

/// Puts the option back as the test found it, on every way out.
struct Restore(bool);

impl Drop for Restore {
    fn drop(&mut self) {
        if let Err(e) = alcove_cgroup::set_favor_dynmods(self.0) {
            eprintln!("could not put favordynmods back to {}: {e}", self.0);
        }
    }
}

/// Turns the option off for a test: false (with a SKIPPED line) where the
/// kernel keeps it on.
fn turned_off_or_skipped(test: &str) -> bool {
    match alcove_cgroup::set_favor_dynmods(false) {
        Ok(_) => true,
        Err(e @ alcove_cgroup::FavorDynmodsError::NotApplied { .. }) => {
            common::skip_machine(
                test,
                &format!("favordynmods cannot be turned off here: {e}"),
            );
            false
        }
        Err(e) => panic!("turning favordynmods off for the test: {e}"),
    }
}

fn without_favor(options: &[String]) -> Vec<String> {
    options.iter().filter(|o| *o != FAVOR).cloned().collect()
}

#[test]
fn the_daemon_mounts_the_cgroup2_tree_favordynmods_keeping_its_other_options() {
    let test = "the_daemon_mounts_the_cgroup2_tree_favordynmods_keeping_its_other_options";
    if !common::root_or_skip(test) {
        return;
    }
    let _serial = common::serial();
    let Some((mount, mount_flags, found)) = cgroup2_options() else {
        common::skip_machine(test, "no cgroup2 tree is mounted here (v1 only)");
        return;
    };
    let _restore = Restore(found.iter().any(|o| o == FAVOR));
    if !turned_off_or_skipped(test) {
        return;
    }
    let (_, _, off) = cgroup2_options().unwrap();
    assert!(!off.contains(&FAVOR.to_owned()), "still on: {off:?}");
    assert_eq!(
        off,
        without_favor(&found),
        "turning it off changed other options"
    );
    // Not captured: the VM's log shows which options were kept.
    let _ = writeln!(
        std::io::stderr(),
        "cgroup2 tree at {mount} ({mount_flags}): options found {found:?}"
    );

    let dir = tempfile::tempdir().unwrap();
    let info = [("ALCOVE_LOG", "info")];
    let left = Daemon::start_with_env(&dir.path().join("left"), &["--no-favordynmods"], &info);
    let (_, _, now) = cgroup2_options().unwrap();
    assert_eq!(now, off, "--no-favordynmods changed the tree's options");
    assert!(
        left.log
            .lock()
            .unwrap()
            .contains("--no-favordynmods: the cgroup2 tree is left"),
        "the daemon did not say it left the tree alone: {}",
        left.log.lock().unwrap()
    );
    drop(left);

    let daemon = Daemon::start_with_env(
        &dir.path().join("favored"),
        &[FAVORDYNMODS_AS_SERVED],
        &info,
    );
    let (_, flags_now, now) = cgroup2_options().unwrap();
    assert!(
        now.contains(&FAVOR.to_owned()),
        "the daemon did not add favordynmods: {now:?}; its log: {}",
        daemon.log.lock().unwrap()
    );
    assert_eq!(
        without_favor(&now),
        off,
        "the daemon's reconfiguration changed the tree's other options"
    );
    assert_eq!(
        flags_now, mount_flags,
        "the daemon's reconfiguration changed the mount's own flags"
    );
    assert!(daemon
        .log
        .lock()
        .unwrap()
        .contains("mounted the cgroup2 tree favordynmods"));
    let doctor = common::alcove(&["doctor"]);
    let report = String::from_utf8_lossy(&doctor.stdout);
    assert!(
        report.contains(&format!(
            "fast: the cgroup tree at {mount} is mounted favordynmods"
        )),
        "alcove doctor does not see it: {report}"
    );
}

#[test]
fn the_daemon_puts_favordynmods_back_when_the_tree_loses_it() {
    let test = "the_daemon_puts_favordynmods_back_when_the_tree_loses_it";
    if !common::root_or_skip(test) {
        return;
    }
    let _serial = common::serial();
    let Some((_, _, found)) = cgroup2_options() else {
        common::skip_machine(test, "no cgroup2 tree is mounted here (v1 only)");
        return;
    };
    let _restore = Restore(found.iter().any(|o| o == FAVOR));
    let dir = tempfile::tempdir().unwrap();
    let info = [("ALCOVE_LOG", "info")];
    let daemon = Daemon::start_with_env(dir.path(), &[FAVORDYNMODS_AS_SERVED], &info);
    let (_, _, served) = cgroup2_options().unwrap();
    assert!(served.contains(&FAVOR.to_owned()), "not on: {served:?}");
    // What a container runtime does for a container sharing the host's
    // cgroup namespace: a new cgroup2 mount, whose options (here the tree's
    // own but favordynmods) become the whole tree's.
    let off = without_favor(&served);
    let data = off
        .iter()
        .filter(|o| *o != "rw")
        .cloned()
        .collect::<Vec<_>>();
    let point = tempfile::tempdir().unwrap();
    let mut mount = std::process::Command::new("mount");
    mount.args(["-t", "cgroup2"]);
    if !data.is_empty() {
        mount.args(["-o", &data.join(",")]);
    }
    let mounted = mount.arg("none").arg(point.path()).output().unwrap();
    assert!(mounted.status.success(), "mount -t cgroup2: {mounted:?}");
    let unmounted = std::process::Command::new("umount")
        .arg(point.path())
        .output()
        .unwrap();
    assert!(unmounted.status.success(), "umount: {unmounted:?}");
    let said = "had lost favordynmods";
    // Still on: the kernel keeps it, unless the daemon (which looks every
    // 5 s) put it back already, as its log would say.
    let (_, _, cleared) = cgroup2_options().unwrap();
    if cleared.contains(&FAVOR.to_owned()) && !daemon.log.lock().unwrap().contains(said) {
        common::skip_machine(
            test,
            &format!("a new cgroup2 mount did not clear favordynmods ({cleared:?}): the kernel keeps it on"),
        );
        return;
    }
    assert_eq!(
        without_favor(&cleared),
        off,
        "the new mount changed other options"
    );
    // Both the option back and the daemon's line saying so (the log is read
    // on a thread of its own, after the option shows).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let (back, log) = loop {
        let (_, _, now) = cgroup2_options().unwrap();
        let log = daemon.log.lock().unwrap().clone();
        let done = now.contains(&FAVOR.to_owned()) && log.contains(said);
        if done || std::time::Instant::now() > deadline {
            break (now, log);
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    assert!(
        back.contains(&FAVOR.to_owned()),
        "the daemon did not put favordynmods back within 20 s: {back:?}; its log: {log}"
    );
    assert_eq!(
        without_favor(&back),
        off,
        "putting it back changed other options"
    );
    assert!(
        log.contains(said),
        "the daemon did not say it put the option back: {log}"
    );
    drop(daemon);
}
