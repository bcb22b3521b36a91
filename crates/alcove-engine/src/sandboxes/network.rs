//! `net: outbound`: a sandbox's own network namespace with a route out.
//!
//! Each such sandbox gets a veth pair (`alcN` on the host, `eth0` inside) on
//! a /30 of [`SUBNET`], and the host masquerades what leaves it. The kernel
//! carries the packets (no user-space network stack parses what hostile code
//! sends), and a link costs a network device, not a process. What it may
//! reach is decided in the kernel twice: iptables chains of alcove's own
//! (host_net.rs) drop anything from a sandbox to the host, to another
//! sandbox or to link-local addresses, and the eBPF cgroup programs
//! (connect, sendmsg, bind) refuse every address outside its rules. Names
//! are answered by the daemon (resolver.rs), which opens the addresses of
//! the names a sandbox may reach to it before it answers.

use super::error::SandboxesError;
use super::host_net;
pub use super::host_net::readiness;
use alcove_bpf::IpNet;
use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::{AsRawFd, OwnedFd};
use std::process::{Command, Stdio};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

/// The addresses outbound sandboxes' links are numbered from.
pub const SUBNET: Ipv4Addr = Ipv4Addr::new(10, 231, 0, 0);
pub(super) const SUBNET_PREFIX: u8 = 16;
/// /30 links in the subnet.
const LINKS: u32 = 1 << (32 - SUBNET_PREFIX as u32 - 2);
/// Host-side interface names start with this (and the iptables rules match it).
pub(super) const IF_PREFIX: &str = "alc";
/// What a sandbox's resolver is, inside its own namespace.
pub const RESOLVER: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 53);
/// The most rules in an allow-list.
pub const MAX_RULES: usize = 64;
/// The host's own addresses each sandbox's eBPF rules refuse by name (the
/// iptables INPUT chain refuses them all, however many).
const MAX_HOST_DENIES: usize = 64;

/// Closed to every outbound sandbox, whatever its rules: its links' subnet
/// (the other sandboxes), link-local (cloud metadata services), loopback
/// (its own anyway), "this network", multicast, and the reserved range with
/// the broadcast address.
const CLOSED: [(Ipv4Addr, u8); 6] = [
    (SUBNET, SUBNET_PREFIX),
    (Ipv4Addr::new(169, 254, 0, 0), 16),
    (Ipv4Addr::new(127, 0, 0, 0), 8),
    (Ipv4Addr::new(0, 0, 0, 0), 8),
    (Ipv4Addr::new(224, 0, 0, 0), 4),
    (Ipv4Addr::new(240, 0, 0, 0), 4),
];

/// Closed to a sandbox without an allow-list ("anywhere" is the public
/// internet): private and shared ranges, where a host's LAN, its cloud
/// network, containers and cluster services are. An allow-list may name them.
const PRIVATE: [(Ipv4Addr, u8); 4] = [
    (Ipv4Addr::new(10, 0, 0, 0), 8),
    (Ipv4Addr::new(172, 16, 0, 0), 12),
    (Ipv4Addr::new(192, 168, 0, 0), 16),
    (Ipv4Addr::new(100, 64, 0, 0), 10),
];

impl AllowOut {
    /// Whether an answer for one of its names may open `addr`: not an
    /// address in a private or shared range ([`PRIVATE`]) that none of its
    /// ranges opens (an answer the sandbox's code can influence must not
    /// rebind into a LAN, a cloud network or cluster services).
    pub(super) fn name_may_open(&self, addr: Ipv4Addr) -> bool {
        let host = net((addr, 32));
        !PRIVATE.iter().any(|&range| net(range).contains(&host))
            || self.nets.iter().any(|n| n.contains(&host))
    }
}

fn net((addr, prefix): (Ipv4Addr, u8)) -> IpNet {
    IpNet {
        addr: addr.into(),
        prefix,
    }
}

/// Where an outbound sandbox may connect: addresses and names.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowOut {
    pub nets: Vec<IpNet>,
    /// `example.com` (that name) or `.example.com` (from `*.example.com`:
    /// any name below it).
    pub names: Vec<String>,
}

impl AllowOut {
    /// Parses a request's `allow_out`: CIDR ranges, addresses, host names
    /// and `*.domain` patterns.
    pub fn parse(rules: &[String]) -> Result<Self, SandboxesError> {
        if rules.len() > MAX_RULES {
            return Err(SandboxesError::Invalid(format!(
                "allow_out has {} rules; at most {MAX_RULES}",
                rules.len()
            )));
        }
        let mut out = AllowOut::default();
        for rule in rules {
            let bad = |why: &str| {
                SandboxesError::Invalid(format!(
                    "allow_out {rule:?}: {why}; give a CIDR range (10.0.0.0/8), an address, a \
                     host name (pypi.org) or *.domain (*.pythonhosted.org)"
                ))
            };
            if rule.parse::<IpAddr>().is_ok() || rule.contains('/') {
                let range = IpNet::parse(rule).map_err(|e| bad(&e))?;
                if let Some(closed) = CLOSED.iter().map(|c| net(*c)).find(|c| c.contains(&range)) {
                    return Err(SandboxesError::Invalid(format!(
                        "allow_out {rule:?}: {}/{} is closed to sandboxes (the other sandboxes, \
                         link-local and cloud metadata, loopback, multicast and reserved addresses)",
                        closed.addr, closed.prefix
                    )));
                }
                if !range.addr.is_ipv4() {
                    return Err(bad("outbound sandboxes have IPv4 only"));
                }
                out.nets.push(range);
                continue;
            }
            let (wild, name) = match rule.strip_prefix("*.") {
                Some(rest) => (true, rest),
                None => (false, rule.as_str()),
            };
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            let label_ok = |l: &str| {
                !l.is_empty()
                    && l.len() <= 63
                    && l.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            };
            if name.len() > 253 || !name.split('.').all(label_ok) {
                return Err(bad("not a host name"));
            }
            out.names.push(if wild { format!(".{name}") } else { name });
        }
        Ok(out)
    }

    /// Whether the sandbox has no rules: the public internet.
    pub fn anywhere(&self) -> bool {
        self.nets.is_empty() && self.names.is_empty()
    }

    /// Whether the sandbox may resolve `name` (lower case, no final dot):
    /// any name when the rules name none (addresses decide then).
    pub(super) fn lets_resolve(&self, name: &str) -> bool {
        self.names.is_empty()
            || self.names.iter().any(|rule| match rule.strip_prefix('.') {
                Some(domain) => {
                    name.len() > rule.len() && name.ends_with(rule.as_str()) && !domain.is_empty()
                }
                None => name == rule,
            })
    }
}

/// An outbound sandbox's link, held for its life: its namespace, the host
/// side of its veth, its resolver. Dropping it takes the link down.
pub struct Outbound {
    index: u32,
    pub netns: Arc<OwnedFd>,
    resolver: Option<tokio::task::JoinHandle<()>>,
    /// Its link number, this daemon's while held (host_net::claim_link).
    _claim: File,
}

impl Outbound {
    /// Makes the namespace and its link, and starts its resolver.
    pub async fn create(
        allow: Arc<AllowOut>,
        upstream: Option<SocketAddr>,
        monitor: alcove_monitor::MonitorService,
        cgroup_id: Arc<AtomicU64>,
    ) -> Result<Self, SandboxesError> {
        let fail = |what: &str, e: String| SandboxesError::Start(format!("{what}: {e}"));
        let made = tokio::task::spawn_blocking(|| -> Result<_, SandboxesError> {
            host_net::ensure_host().map_err(|e| {
                SandboxesError::Start(format!(
                    "preparing the host's network for outbound sandboxes: {e}"
                ))
            })?;
            let (index, claim) = claim_free_link()?;
            let (netns, socket) = make_link(index)?;
            Ok((index, claim, netns, socket))
        })
        .await
        .map_err(|_| fail("making the sandbox's link", "the task failed".into()))??;
        let (index, claim, netns, socket) = made;
        let mut link = Outbound {
            index,
            netns: Arc::new(netns),
            resolver: None,
            _claim: claim,
        };
        let socket = tokio::net::UdpSocket::from_std(socket)
            .map_err(|e| fail("starting the sandbox's resolver", e.to_string()))?;
        link.resolver = Some(tokio::spawn(super::resolver::serve(
            socket, allow, upstream, monitor, cgroup_id,
        )));
        Ok(link)
    }

    /// The eBPF rules the sandbox runs under: its allow-list (the public
    /// internet when it has none), less what is closed to every sandbox and
    /// the host's own addresses.
    pub fn policy(allow: &AllowOut) -> Result<alcove_bpf::SandboxPolicy, SandboxesError> {
        let mut nets = match allow.anywhere() {
            true => vec![net((Ipv4Addr::UNSPECIFIED, 0))],
            false => allow.nets.clone(),
        };
        // Its own servers bind the wildcard address (a connect to it stays
        // inside its namespace).
        nets.push(net((Ipv4Addr::UNSPECIFIED, 32)));
        let mut deny: Vec<IpNet> = CLOSED.iter().map(|c| net(*c)).collect();
        if allow.anywhere() {
            deny.extend(PRIVATE.iter().map(|p| net(*p)));
        }
        let host = alcove_sys::net::interface_addresses()
            .map_err(SandboxesError::io("listing the host's addresses"))?;
        deny.extend(
            host.into_iter()
                .filter(|a| matches!(a, IpAddr::V4(v4) if !v4.is_loopback()))
                .take(MAX_HOST_DENIES)
                .map(|addr| IpNet { addr, prefix: 32 }),
        );
        Ok(alcove_bpf::SandboxPolicy {
            net_allow: Some(nets),
            net_deny: deny,
            ..Default::default()
        })
    }

    /// The resolv.conf the sandbox sees.
    pub fn resolv_conf() -> Vec<u8> {
        format!("nameserver {RESOLVER}\noptions edns0\n").into_bytes()
    }
}

impl Drop for Outbound {
    fn drop(&mut self) {
        if let Some(task) = self.resolver.take() {
            task.abort(); // its socket holds the namespace; its queries go with it
        }
        // The pair goes with the namespace; deleting the host side now frees
        // the number at once, whoever else still holds the namespace. The
        // claim is let go after (the field drops after this).
        let _ = ip_batch(None, &format!("link del {}\n", if_name(self.index)));
    }
}

/// The first link number no daemon holds, claimed.
fn claim_free_link() -> Result<(u32, File), SandboxesError> {
    for index in 0..LINKS {
        match host_net::claim_link(index) {
            Ok(Some(claim)) => return Ok((index, claim)),
            Ok(None) => continue,
            Err(e) => return Err(SandboxesError::io("claiming a link number")(e)),
        }
    }
    Err(SandboxesError::Start(format!(
        "all {LINKS} outbound links on this host are in use"
    )))
}

fn if_name(index: u32) -> String {
    format!("{IF_PREFIX}{index}")
}

/// The host's and the sandbox's addresses on link `index`.
fn link_addresses(index: u32) -> (Ipv4Addr, Ipv4Addr) {
    let base = u32::from(SUBNET) + index * 4;
    (Ipv4Addr::from(base + 1), Ipv4Addr::from(base + 2))
}

/// Runs `ip -batch -` with `commands`, inside `netns` if given.
fn ip_batch(netns: Option<&str>, commands: &str) -> Result<(), String> {
    use std::io::Write;
    let mut command = match netns {
        Some(path) => {
            let mut c = Command::new("nsenter");
            c.arg(format!("--net={path}")).arg("ip");
            c
        }
        None => Command::new("ip"),
    };
    let mut child = command
        .args(["-batch", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("running ip (install iproute2): {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(commands.as_bytes())
            .map_err(|e| e.to_string())?;
    }
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    match out.status.success() {
        true => Ok(()),
        false => Err(String::from_utf8_lossy(&out.stderr).trim().to_owned()),
    }
}

/// A new namespace with its link and the resolver's socket in it.
fn make_link(index: u32) -> Result<(OwnedFd, std::net::UdpSocket), SandboxesError> {
    let (netns, socket) = std::thread::scope(|s| {
        s.spawn(|| -> std::io::Result<(OwnedFd, std::net::UdpSocket)> {
            // This thread only: it leaves for the new namespace and never
            // comes back (it ends here).
            alcove_sys::ns::unshare(libc::CLONE_NEWNET)?;
            alcove_sys::net::loopback_up()?;
            let _ = std::fs::write("/proc/sys/net/ipv6/conf/all/disable_ipv6", "1");
            let netns = OwnedFd::from(File::open("/proc/thread-self/ns/net")?);
            let socket = std::net::UdpSocket::bind((RESOLVER, 53))?;
            socket.set_nonblocking(true)?;
            Ok((netns, socket))
        })
        .join()
        .map_err(|_| std::io::Error::other("the namespace's thread failed"))?
    })
    .map_err(SandboxesError::io("making the sandbox's network namespace"))?;
    let name = if_name(index);
    let (host, sandbox) = link_addresses(index);
    let path = format!("/proc/{}/fd/{}", std::process::id(), netns.as_raw_fd());
    // The number is ours (claimed): a link of that name is a dead daemon's.
    let _ = ip_batch(None, &format!("link del {name}\n"));
    ip_batch(
        None,
        &format!(
            "link add {name} type veth peer name eth0 netns {path}\n\
             addr add {host}/30 dev {name}\n\
             link set {name} up\n"
        ),
    )
    .map_err(|e| SandboxesError::Start(format!("making the sandbox's link {name}: {e}")))?;
    let inside = ip_batch(
        Some(&path),
        &format!(
            "addr add {sandbox}/30 dev eth0\n\
             link set eth0 up\n\
             route add default via {host}\n"
        ),
    );
    if let Err(e) = inside {
        let _ = ip_batch(None, &format!("link del {name}\n"));
        return Err(SandboxesError::Start(format!(
            "numbering the sandbox's link: {e}"
        )));
    }
    Ok((netns, socket))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allow_out_parses_ranges_names_and_wildcards() {
        let a = AllowOut::parse(&[
            "10.0.0.0/8".into(),
            "192.0.2.7".into(),
            "PyPI.org.".into(),
            "*.pythonhosted.org".into(),
        ])
        .unwrap();
        assert_eq!(a.nets.len(), 2);
        assert_eq!(a.names, vec!["pypi.org", ".pythonhosted.org"]);
        assert!(a.lets_resolve("pypi.org"));
        assert!(!a.lets_resolve("evil.pypi.org"));
        assert!(a.lets_resolve("files.pythonhosted.org"));
        assert!(!a.lets_resolve("pythonhosted.org"));
        assert!(!a.lets_resolve("evilpythonhosted.org"));
        // Ranges only: names are free, addresses decide.
        let ranges = AllowOut::parse(&["0.0.0.0/0".into(), "169.254.0.0/15".into()]).unwrap();
        assert!(ranges.lets_resolve("anything.test") && !ranges.anywhere());
    }

    #[test]
    fn anywhere_is_the_public_internet_without_the_closed_ranges() {
        let p = Outbound::policy(&AllowOut::default()).unwrap();
        assert!(p
            .net_allow
            .as_ref()
            .unwrap()
            .contains(&net((Ipv4Addr::UNSPECIFIED, 0))));
        for closed in [
            "169.254.169.254",
            "10.231.0.6",
            "10.1.2.3",
            "192.168.1.1",
            "255.255.255.255",
            "224.0.0.1",
        ] {
            let addr = IpNet::parse(closed).unwrap();
            assert!(p.net_deny.iter().any(|d| d.contains(&addr)), "{closed}");
        }
        // With an allow-list, private ranges are the list's to open.
        let listed = Outbound::policy(&AllowOut::parse(&["10.0.0.0/8".into()]).unwrap()).unwrap();
        assert!(!listed
            .net_deny
            .iter()
            .any(|d| d.prefix == 8 && d.addr == Ipv4Addr::new(10, 0, 0, 0)));
    }

    #[test]
    fn a_name_opens_a_private_address_only_through_a_listed_range() {
        let names = AllowOut::parse(&["db.test".into()]).unwrap();
        assert!(!names.name_may_open(Ipv4Addr::new(10, 1, 2, 3)));
        assert!(!names.name_may_open(Ipv4Addr::new(100, 64, 0, 9)));
        assert!(names.name_may_open(Ipv4Addr::new(198, 51, 100, 1)));
        let listed = AllowOut::parse(&["db.test".into(), "10.1.0.0/16".into()]).unwrap();
        assert!(listed.name_may_open(Ipv4Addr::new(10, 1, 2, 3)));
        assert!(!listed.name_may_open(Ipv4Addr::new(10, 2, 0, 1)));
    }

    #[test]
    fn allow_out_refuses_what_is_not_a_rule() {
        for bad in [
            "",
            "a..b",
            "exa mple.com",
            "10.0.0.0/33",
            "*.",
            "x/y",
            &"a".repeat(64),
        ] {
            let e = AllowOut::parse(&[bad.to_string()]).unwrap_err().to_string();
            assert!(e.contains("allow_out"), "{bad:?}: {e}");
        }
        let many: Vec<String> = (0..=MAX_RULES).map(|i| format!("h{i}.test")).collect();
        assert!(AllowOut::parse(&many).is_err());
    }

    #[test]
    fn links_do_not_overlap() {
        assert_eq!(
            link_addresses(0),
            (Ipv4Addr::new(10, 231, 0, 1), Ipv4Addr::new(10, 231, 0, 2))
        );
        assert_eq!(
            link_addresses(LINKS - 1),
            (
                Ipv4Addr::new(10, 231, 255, 253),
                Ipv4Addr::new(10, 231, 255, 254)
            )
        );
    }
}
