//! An outbound sandbox's resolver: a UDP socket the daemon holds at
//! 127.0.0.53:53 in the sandbox's own network namespace. It answers a name
//! the sandbox's rules allow by asking the daemon's upstream resolver, and
//! opens the addresses of the answer to that sandbox (eBPF) before it
//! answers; any other name gets NXDOMAIN. Bounded per sandbox: queries in
//! flight, queries per second, addresses learned, log lines.

use super::dns;
use super::network::AllowOut;
use alcove_bpf::IpNet;
use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Addresses names may open to one sandbox.
pub const MAX_LEARNED: usize = 256;
/// Queries answered at once per sandbox; more wait.
const IN_FLIGHT: usize = 16;
/// Queries per second per sandbox, and the burst above it; more are dropped.
const RATE: f64 = 50.0;
const BURST: f64 = 200.0;
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(3);
/// The largest answer passed on over UDP (EDNS's common safe size); a
/// larger one goes back truncated (TC), as a resolver over UDP does.
const MAX_UDP_ANSWER: usize = 1232;
/// At most one log line per sandbox per this long (with a count).
const LOG_EVERY: Duration = Duration::from_secs(10);

/// What a sandbox's resolver shares between its queries.
struct State {
    allow: Arc<AllowOut>,
    upstream: Option<SocketAddr>,
    monitor: alcove_monitor::MonitorService,
    cgroup_id: Arc<AtomicU64>,
    learned: Mutex<BTreeSet<IpAddr>>,
    /// Addresses its rules refused when an answer gave them.
    refused: Mutex<BTreeSet<IpAddr>>,
    log: Mutex<Throttled>,
}

/// Refusals and failures seen since the last log line.
struct Throttled {
    last: Option<Instant>,
    refused: u64,
    dropped: u64,
    sample: String,
}

impl State {
    fn note(&self, refused: bool, what: &str) {
        let mut log = self.log.lock().unwrap_or_else(|e| e.into_inner());
        if refused {
            log.refused += 1;
        } else {
            log.dropped += 1;
        }
        if log.sample.is_empty() {
            log.sample = what.chars().take(200).collect();
        }
        if log.last.is_some_and(|t| t.elapsed() < LOG_EVERY) {
            return;
        }
        tracing::info!(
            refused = log.refused,
            dropped = log.dropped,
            example = %log.sample,
            "outbound sandbox: names outside its allow-list refused, or queries dropped"
        );
        *log = Throttled {
            last: Some(Instant::now()),
            refused: 0,
            dropped: 0,
            sample: String::new(),
        };
    }
}

/// Serves the sandbox's queries until aborted (its link is dropped).
pub(super) async fn serve(
    socket: tokio::net::UdpSocket,
    allow: Arc<AllowOut>,
    upstream: Option<SocketAddr>,
    monitor: alcove_monitor::MonitorService,
    cgroup_id: Arc<AtomicU64>,
) {
    let socket = Arc::new(socket);
    let state = Arc::new(State {
        allow,
        upstream,
        monitor,
        cgroup_id,
        learned: Mutex::default(),
        refused: Mutex::default(),
        log: Mutex::new(Throttled {
            last: None,
            refused: 0,
            dropped: 0,
            sample: String::new(),
        }),
    });
    let slots = Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT));
    // Aborting this task drops the set, which aborts every query in it: no
    // query outlives the sandbox (its cgroup id may be another's next).
    let mut queries = tokio::task::JoinSet::new();
    let (mut tokens, mut refilled) = (BURST, Instant::now());
    let mut buf = vec![0u8; 1500];
    loop {
        let Ok((len, from)) = socket.recv_from(&mut buf).await else {
            return;
        };
        while queries.try_join_next().is_some() {}
        tokens = (tokens + refilled.elapsed().as_secs_f64() * RATE).min(BURST);
        refilled = Instant::now();
        if tokens < 1.0 {
            state.note(false, "over the query rate");
            continue;
        }
        tokens -= 1.0;
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        let query = buf[..len].to_vec();
        let (socket, state) = (Arc::clone(&socket), Arc::clone(&state));
        queries.spawn(async move {
            let _slot = slot;
            if let Some(reply) = answer(&state, &query).await {
                let _ = socket.send_to(&reply, from).await;
            }
        });
    }
}

/// The answer to one query; None for what a stub resolver would not send.
async fn answer(state: &State, query: &[u8]) -> Option<Vec<u8>> {
    let q = dns::question(query)?;
    if !state.allow.lets_resolve(&q.name) {
        state.note(true, &q.name);
        return Some(dns::refusal(query, &q, dns::NXDOMAIN));
    }
    let Some(answer) = ask_upstream(state.upstream, query, &q).await else {
        return Some(dns::refusal(query, &q, dns::SERVFAIL));
    };
    // A name the rules name opens its addresses; with ranges only (or no
    // rules) names are free and the addresses decide.
    let named = !state.allow.names.is_empty();
    if named && !open_addresses(state, &dns::addresses(&answer)).await {
        // Its addresses could not be opened: an answer would point at a
        // closed door (past the learning bound, or the monitor failed).
        state.note(
            false,
            &format!("{}: its addresses could not be opened", q.name),
        );
        return Some(dns::refusal(query, &q, dns::SERVFAIL));
    }
    if answer.len() > MAX_UDP_ANSWER {
        return Some(dns::truncated(query, &q));
    }
    Some(answer)
}

/// Opens `addrs` to the sandbox (those its rules do not refuse); false if
/// one could not be (the bound reached, the monitor failed, the sandbox
/// gone).
async fn open_addresses(state: &State, addrs: &[IpAddr]) -> bool {
    let id = state.cgroup_id.load(Ordering::Relaxed);
    for &addr in addrs {
        let IpAddr::V4(v4) = addr else {
            continue; // outbound sandboxes have IPv4 only
        };
        if !state.allow.name_may_open(v4) {
            continue;
        }
        {
            let learned = state.learned.lock().unwrap_or_else(|e| e.into_inner());
            if learned.contains(&addr) {
                continue;
            }
            if learned.len() >= MAX_LEARNED {
                return false;
            }
            let refused = state.refused.lock().unwrap_or_else(|e| e.into_inner());
            if refused.contains(&addr) {
                continue;
            }
        }
        // The run that asked is still the one the cgroup id names.
        if id == 0 || state.cgroup_id.load(Ordering::Relaxed) != id {
            return false;
        }
        let monitor = state.monitor.clone();
        let net = IpNet {
            addr: v4.into(),
            prefix: 32,
        };
        match tokio::task::spawn_blocking(move || monitor.allow_net(id, net)).await {
            Ok(Ok(true)) => {
                state
                    .learned
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(addr);
            }
            // Refused by its own rules (the host's address, say): stays
            // closed, and is not asked about again (up to a bound).
            Ok(Ok(false)) => {
                let mut refused = state.refused.lock().unwrap_or_else(|e| e.into_inner());
                if refused.len() < MAX_LEARNED {
                    refused.insert(addr);
                }
            }
            _ => return false,
        }
    }
    true
}

/// Asks the upstream resolver; None when there is none or it does not answer.
async fn ask_upstream(
    upstream: Option<SocketAddr>,
    query: &[u8],
    q: &dns::Question,
) -> Option<Vec<u8>> {
    let upstream = upstream?;
    let bind: SocketAddr = match upstream {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = tokio::net::UdpSocket::bind(bind).await.ok()?;
    socket.connect(upstream).await.ok()?;
    socket.send(query).await.ok()?;
    let mut buf = vec![0u8; 65535];
    let deadline = tokio::time::Instant::now() + UPSTREAM_TIMEOUT;
    loop {
        let len = tokio::time::timeout_at(deadline, socket.recv(&mut buf))
            .await
            .ok()?
            .ok()?;
        if dns::answers(&buf[..len], query, q) {
            return Some(buf[..len].to_vec());
        }
    }
}

/// The host's first nameserver (the resolver sandboxes' names go to when
/// the daemon is given none).
pub fn host_resolver() -> Option<SocketAddr> {
    let text = std::fs::read_to_string("/etc/resolv.conf").ok()?;
    text.lines().find_map(|line| {
        let mut words = line.split_whitespace();
        match (words.next(), words.next()) {
            (Some("nameserver"), Some(addr)) => addr.parse::<IpAddr>().ok().map(|a| (a, 53).into()),
            _ => None,
        }
    })
}
