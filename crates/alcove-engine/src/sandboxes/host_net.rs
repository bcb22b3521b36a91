//! What outbound sandboxes need of the host: IPv4 forwarding, alcove's own
//! iptables chains (checked at every create, restored when something, a
//! firewall reload say, removed them), and a lock per link number shared by
//! every daemon on the host.

use super::network::{IF_PREFIX, SUBNET, SUBNET_PREFIX};
use std::fs::File;
use std::os::fd::AsFd;
use std::path::Path;
use std::process::{Command, Stdio};

/// Lock files: one per link number, and one for changing the chains.
const LOCK_DIR: &str = "/run/alcove/net";

/// A program outbound sandboxes need that is not on PATH, if any.
pub(super) fn missing_tool() -> Option<&'static str> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into());
    ["ip", "iptables", "iptables-save", "nsenter"]
        .into_iter()
        .find(|tool| !std::env::split_paths(&path).any(|dir| dir.join(tool).is_file()))
}

/// A route of the host's inside the links' subnet that is not a link of
/// an outbound sandbox's: the subnet is someone else's then.
pub(super) fn subnet_taken() -> Result<Option<String>, String> {
    let out = Command::new("ip")
        .args(["-o", "-4", "route", "show", "root"])
        .arg(format!("{SUBNET}/{SUBNET_PREFIX}"))
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("running ip (install iproute2): {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text
        .lines()
        .find(|route| {
            let dev = route.split_whitespace().skip_while(|w| *w != "dev").nth(1);
            !dev.is_some_and(is_link_name)
        })
        .map(|route| route.trim().to_owned()))
}

/// Whether `name` is an outbound sandbox's host-side link (`alcN`).
pub(super) fn is_link_name(name: &str) -> bool {
    name.strip_prefix(IF_PREFIX)
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// Takes link number `index` for this daemon, for as long as the file
/// lives (a killed daemon's numbers are free again at once); None when
/// another daemon holds it.
pub(super) fn claim_link(index: u32) -> std::io::Result<Option<File>> {
    let file = lock_file(&format!("link-{index}.lock"))?;
    Ok(alcove_sys::fd::flock(file.as_fd(), alcove_sys::fd::Lock::TryExclusive)?.then_some(file))
}

fn lock_file(name: &str) -> std::io::Result<File> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(LOCK_DIR)?;
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
        .open(Path::new(LOCK_DIR).join(name))
}

/// alcove's chains: (table, the chain jumping to it, its name, its rules as
/// `iptables-save` prints them).
fn chains() -> [(&'static str, &'static str, &'static str, Vec<String>); 3] {
    let ifs = format!("{IF_PREFIX}+");
    [
        (
            "filter",
            "FORWARD",
            "ALCOVE-FORWARD",
            vec![
                format!("-i {ifs} -o {ifs} -j DROP"),
                format!("-d 169.254.0.0/16 -i {ifs} -j DROP"),
                format!("-i {ifs} -j ACCEPT"),
                format!("-o {ifs} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"),
                format!("-o {ifs} -j DROP"),
            ],
        ),
        (
            "filter",
            "INPUT",
            "ALCOVE-INPUT",
            vec![format!("-i {ifs} -j DROP")],
        ),
        (
            "nat",
            "POSTROUTING",
            "ALCOVE-POSTROUTING",
            vec![format!(
                "-s {SUBNET}/{SUBNET_PREFIX} ! -o {ifs} -j MASQUERADE"
            )],
        ),
    ]
}

/// Whether `saved` (iptables-save's output) holds alcove's chains as they
/// should be, and the jumps to them.
fn chains_in_place(saved: &str) -> bool {
    let mut table = "";
    let mut rules: Vec<(&str, &str)> = Vec::new();
    for line in saved.lines() {
        if let Some(t) = line.strip_prefix('*') {
            table = t;
        } else if let Some(rule) = line.strip_prefix("-A ") {
            rules.push((table, rule));
        }
    }
    chains().iter().all(|(t, parent, chain, wanted)| {
        let jump = format!("{parent} -j {chain}");
        let mine: Vec<&str> = rules
            .iter()
            .filter(|(table, _)| table == t)
            .filter_map(|(_, r)| r.strip_prefix(chain).and_then(|r| r.strip_prefix(' ')))
            .collect();
        rules.iter().any(|(table, r)| table == t && *r == jump)
            && mine.len() == wanted.len()
            && mine.iter().zip(wanted).all(|(a, b)| a == b)
    })
}

/// Makes sure forwarding is on and alcove's chains are in place, putting
/// them back if not. Run at every outbound create (one iptables-save).
pub(super) fn ensure_host() -> Result<(), String> {
    if let Some(tool) = missing_tool() {
        return Err(format!(
            "{tool} is not installed (scripts/packages.sh installs it)"
        ));
    }
    let forwarding = std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap_or_default();
    if forwarding.trim() != "1" {
        std::fs::write("/proc/sys/net/ipv4/ip_forward", "1")
            .map_err(|e| format!("turning on IPv4 forwarding: {e}"))?;
    }
    if chains_in_place(&iptables_save()?) {
        return Ok(());
    }
    // Another daemon may be doing the same: one at a time, and look again.
    let lock = lock_file("iptables.lock").map_err(|e| format!("locking {LOCK_DIR}: {e}"))?;
    alcove_sys::fd::flock(lock.as_fd(), alcove_sys::fd::Lock::Exclusive)
        .map_err(|e| format!("locking {LOCK_DIR}: {e}"))?;
    if chains_in_place(&iptables_save()?) {
        return Ok(());
    }
    if let Some(route) = subnet_taken()? {
        return Err(format!(
            "the host already routes {SUBNET}/{SUBNET_PREFIX}, which outbound sandboxes' \
             links are numbered from ({route})"
        ));
    }
    for (table, parent, chain, rules) in chains() {
        let said = std::cell::RefCell::new(String::new());
        let ipt = |args: &[&str]| -> Result<bool, String> {
            let out = Command::new(iptables().0)
                .args(["-w", "-t", table])
                .args(args)
                .stdin(Stdio::null())
                .output()
                .map_err(|e| format!("running iptables (install iptables): {e}"))?;
            *said.borrow_mut() = String::from_utf8_lossy(&out.stderr).trim().to_owned();
            Ok(out.status.success())
        };
        if !ipt(&["-N", chain])? && !ipt(&["-F", chain])? {
            return Err(format!(
                "{} cannot make or flush the {table} chain {chain} (does this kernel have \
                 netfilter?): {}",
                iptables().0,
                said.borrow()
            ));
        }
        for rule in &rules {
            let mut args = vec!["-A", chain];
            args.extend(rule.split(' '));
            if !ipt(&args)? {
                return Err(format!("iptables refused a rule in {chain}: {rule}"));
            }
        }
        if !ipt(&["-C", parent, "-j", chain])? && !ipt(&["-I", parent, "1", "-j", chain])? {
            return Err(format!("iptables cannot jump from {parent} to {chain}"));
        }
    }
    match chains_in_place(&iptables_save()?) {
        true => Ok(()),
        false => Err("iptables does not show alcove's chains as they were made".into()),
    }
}

/// `iptables` and `iptables-save`, or their legacy (x_tables) twins on a
/// kernel without nf_tables, where Debian's default (nft) ones cannot start.
/// Chosen once: a host whose firewall is nft keeps nft.
fn iptables() -> (&'static str, &'static str) {
    static CHOSEN: std::sync::OnceLock<(&str, &str)> = std::sync::OnceLock::new();
    *CHOSEN.get_or_init(|| {
        let works = |save: &str| {
            Command::new(save)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        };
        if !works("iptables-save") && works("iptables-legacy-save") {
            ("iptables-legacy", "iptables-legacy-save")
        } else {
            ("iptables", "iptables-save")
        }
    })
}

fn iptables_save() -> Result<String, String> {
    let out = Command::new(iptables().1)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("running iptables-save (install iptables): {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "iptables-save failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// What `alcove doctor` says about outbound sandboxes on this host.
pub fn readiness() -> String {
    if let Some(tool) = missing_tool() {
        return format!("unavailable: {tool} is not installed (scripts/packages.sh installs it)");
    }
    match subnet_taken() {
        Ok(Some(route)) => {
            return format!(
                "unavailable: the host routes {SUBNET}/{SUBNET_PREFIX} already ({route})"
            )
        }
        Err(e) => return format!("unknown: {e}"),
        Ok(None) => {}
    }
    let forwarding = std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap_or_default();
    format!(
        "veth + NAT on {SUBNET}/{SUBNET_PREFIX}, rules in eBPF and iptables; IPv4 forwarding {}",
        if forwarding.trim() == "1" {
            "on"
        } else {
            "off (turned on at the first outbound sandbox)"
        }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn saved(extra: &str) -> String {
        let mut s = String::from("*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -j ALCOVE-INPUT\n-A FORWARD -j ALCOVE-FORWARD\n");
        for (table, _, chain, rules) in chains() {
            if table == "filter" {
                for r in rules {
                    s.push_str(&format!("-A {chain} {r}\n"));
                }
            }
        }
        s.push_str(extra);
        s.push_str("COMMIT\n*nat\n-A POSTROUTING -j ALCOVE-POSTROUTING\n-A ALCOVE-POSTROUTING -s 10.231.0.0/16 ! -o alc+ -j MASQUERADE\nCOMMIT\n");
        s
    }

    #[test]
    fn chains_are_checked_rule_by_rule_and_with_their_jumps() {
        assert!(chains_in_place(&saved("")));
        assert!(!chains_in_place(&saved("-A ALCOVE-INPUT -j ACCEPT\n")));
        assert!(!chains_in_place(
            &saved("").replace("-A INPUT -j ALCOVE-INPUT\n", "")
        ));
        assert!(!chains_in_place(&saved("").replace("*nat", "*mangle")));
        assert!(!chains_in_place(""));
    }

    #[test]
    fn link_names() {
        assert!(is_link_name("alc0") && is_link_name("alc16383"));
        assert!(!is_link_name("alc") && !is_link_name("alcx1") && !is_link_name("eth0"));
    }
}
