//! `alcove serve`: the functions daemon. Every request but /healthz needs a
//! bearer token: the operator's (--token-file, $ALCOVE_TOKEN), or one the
//! daemon creates at first start in DATA_DIR/token (0600, root's), which the
//! local CLI reads. A sandbox — even one on the host's network, which reaches
//! loopback — never sees that file, so it cannot use the API unless it was
//! given the token explicitly.

use alcove_api::{app, AppState, ServerLimits};
use alcove_engine::{Engine, EngineConfig};
use anyhow::{bail, Context};
use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

pub struct ServeOptions {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub token: Option<String>,
    pub token_file: Option<PathBuf>,
    pub image_store: Option<PathBuf>,
    pub max_running: Option<usize>,
    pub max_sandboxes: usize,
    pub sandbox_pool: usize,
    pub sandbox_dns: Option<std::net::SocketAddr>,
    /// Whether to add `favordynmods` to the cgroup2 tree's options at start.
    pub favordynmods: bool,
    pub max_queued: Option<usize>,
    pub max_queued_bytes: Option<u64>,
    pub max_timeout_ms: Option<u64>,
    pub default_timeout_ms: Option<u64>,
    pub max_memory: Option<u64>,
    pub default_memory: Option<u64>,
    pub max_pids: Option<u64>,
    pub default_pids: Option<u64>,
    pub max_output: Option<u64>,
    pub max_cpus: Option<f64>,
    pub max_connections: Option<usize>,
    pub header_timeout: Option<Duration>,
    pub body_timeout: Option<Duration>,
    pub shutdown_grace: Option<Duration>,
    pub workers: Option<u16>,
    pub allow_binds: Vec<alcove_engine::AllowedBind>,
    pub warm_memory: Option<u64>,
    pub warm_ready: Option<u32>,
    pub warm_idle: Option<Duration>,
    pub monitor: alcove_engine::MonitorMode,
    pub log_format: crate::cli::LogFormat,
    pub store: Option<String>,
    pub node: Option<String>,
    pub secrets_key_file: Option<PathBuf>,
    pub store_ca: Option<PathBuf>,
    pub store_wait: Duration,
    pub queue_lease: Duration,
    pub queue_batch: usize,
}

/// The async threads: `--workers`, else one fewer than the CPUs (at least
/// one). They parse, route and relay; sandboxes and the store's calls run
/// elsewhere. Measured on 2 cores: an agent sandbox's exec round trip back
/// to back 1.16 -> 1.06 ms with one thread instead of two (no second thread
/// woken to steal each relayed task), function invocations per second
/// unchanged at concurrency 1 and 8.
fn api_workers(given: Option<u16>) -> usize {
    given.map_or_else(
        || {
            std::thread::available_parallelism()
                .map_or(1, |n| n.get())
                .saturating_sub(1)
                .max(1)
        },
        usize::from,
    )
}

/// A non-empty environment variable.
fn env_text(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// The node name and, with a PostgreSQL URL, the shared store's settings.
fn cluster_config(
    options: &ServeOptions,
    config: &mut alcove_engine::EngineConfig,
) -> anyhow::Result<()> {
    if let Some(node) = options.node.clone().or_else(|| env_text("ALCOVE_NODE")) {
        alcove_engine::valid_node(&node).map_err(anyhow::Error::msg)?;
        config.node = node;
    }
    let Some(url) = options.store.clone().or_else(|| env_text("ALCOVE_STORE")) else {
        if options.secrets_key_file.is_some() {
            bail!("--secrets-key-file is for a shared store: give --store postgres://... too");
        }
        return Ok(());
    };
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        bail!("--store takes a PostgreSQL URL (postgres://USER@HOST:PORT/DATABASE); leave it out for SQLite in --data-dir");
    }
    let lease = options.queue_lease;
    let secs = alcove_engine::MIN_LEASE_SECS..=alcove_engine::MAX_LEASE_SECS;
    if !secs.contains(&lease.as_secs()) {
        bail!("--queue-lease must be {}s to {}s", secs.start(), secs.end());
    }
    let secrets_key = match (&options.secrets_key_file, env_text("ALCOVE_SECRETS_KEY")) {
        (Some(path), _) => read_secret_file(path)?,
        (None, Some(key)) => key,
        (None, None) => bail!(
            "a shared store needs the key its secrets are sealed with: give --secrets-key-file FILE \
             or $ALCOVE_SECRETS_KEY (64 hex digits, `openssl rand -hex 32`), the same on every daemon"
        ),
    };
    config.shared = Some(alcove_engine::SharedStoreConfig {
        url,
        secrets_key,
        wait: options.store_wait,
        lease,
        batch: options.queue_batch.clamp(1, alcove_engine::MAX_QUEUE_BATCH),
        ca_file: options
            .store_ca
            .clone()
            .or_else(|| env_text("ALCOVE_STORE_CA").map(PathBuf::from)),
    });
    Ok(())
}

/// A key file: readable by its owner alone (as ssh insists for its keys).
fn read_secret_file(path: &Path) -> anyhow::Result<String> {
    let file = std::fs::File::open(path)
        .with_context(|| format!("reading the secrets key file {}", path.display()))?;
    let mode = file
        .metadata()
        .with_context(|| format!("reading the secrets key file {}", path.display()))?
        .mode();
    if mode & 0o077 != 0 {
        bail!(
            "the secrets key file {} is readable by others (mode {:o}): chmod 600 it",
            path.display(),
            mode & 0o777
        );
    }
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut std::io::Read::take(file, 4096), &mut bytes)
        .with_context(|| format!("reading the secrets key file {}", path.display()))?;
    Ok(String::from_utf8_lossy(&bytes).trim().to_owned())
}

/// The file the daemon keeps its own token in, and the local CLI reads.
pub const TOKEN_FILE: &str = "token";

fn check_token(token: &str) -> anyhow::Result<()> {
    if token.len() < 16 || token.len() > 4096 || token.bytes().any(|b| !b.is_ascii_graphic()) {
        bail!("the token must be 16 to 4096 printable characters without spaces (try: head -c 24 /dev/urandom | base64)");
    }
    Ok(())
}

/// The operator's token, if they gave one.
fn given_token(options: &ServeOptions) -> anyhow::Result<Option<String>> {
    let token = match (&options.token, &options.token_file) {
        (Some(_), Some(_)) => bail!("give --token or --token-file, not both"),
        (Some(t), None) => Some(t.clone()),
        (None, Some(path)) => Some(read_token_file(path)?),
        (None, None) => std::env::var("ALCOVE_TOKEN").ok().filter(|t| !t.is_empty()),
    };
    if let Some(t) = &token {
        check_token(t)?;
    }
    Ok(token)
}

fn read_token_file(path: &Path) -> anyhow::Result<String> {
    let file = std::fs::File::open(path)
        .with_context(|| format!("reading the token file {}", path.display()))?;
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut std::io::Read::take(file, 8192), &mut bytes)
        .with_context(|| format!("reading the token file {}", path.display()))?;
    Ok(String::from_utf8_lossy(&bytes).trim().to_owned())
}

/// The daemon's own token: read from DATA_DIR/token, or created there
/// (mode 0600, never through a link) at first start.
fn own_token(data_dir: &Path) -> anyhow::Result<String> {
    let path = data_dir.join(TOKEN_FILE);
    let fresh = format!(
        "{}{}",
        alcove_sys::process::random_id(),
        alcove_sys::process::random_id()
    );
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&path)
    {
        Ok(mut file) => {
            file.write_all(format!("{fresh}\n").as_bytes())
                .with_context(|| format!("writing {}", path.display()))?;
            return Ok(fresh);
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e).with_context(|| format!("creating {}", path.display())),
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&path)
        .with_context(|| format!("opening {} (remove it to get a new token)", path.display()))?;
    let meta = file.metadata()?;
    if !meta.is_file() || meta.uid() != alcove_sys::process::effective_uid() {
        bail!(
            "{} is not a regular file owned by this user: remove it and start again for a new token",
            path.display()
        );
    }
    if meta.mode() & 0o077 != 0 {
        bail!(
            "{} can be read by other users (mode {:o}): run `chmod 600 {}`, or remove it for a new token",
            path.display(),
            meta.mode() & 0o777,
            path.display()
        );
    }
    let token = read_token_file(&path)?;
    check_token(&token).with_context(|| format!("the token in {}", path.display()))?;
    Ok(token)
}

fn engine_config(options: &ServeOptions) -> EngineConfig {
    let mut config = EngineConfig::new(options.data_dir.clone());
    config.max_sandboxes = options.max_sandboxes;
    config.sandbox_pool = options.sandbox_pool;
    config.sandbox_dns = options.sandbox_dns;
    if let Some(n) = options.max_running {
        config.max_running = n.max(1);
    }
    if let Some(n) = options.max_queued {
        config.max_queued = n;
    }
    if let Some(n) = options.max_queued_bytes {
        config.max_queued_bytes = n;
    }
    config.allow_binds = options.allow_binds.clone();
    config.monitor = options.monitor;
    if let Some(bytes) = options.warm_memory {
        config.warm.memory_bytes = bytes;
    }
    if let Some(n) = options.warm_ready {
        config.warm.max_ready = n as usize;
    }
    if let Some(idle) = options.warm_idle {
        config.warm.idle = idle;
    }
    let l = &mut config.limits;
    let set = |target: &mut u64, value: Option<u64>| {
        if let Some(v) = value {
            *target = v;
        }
    };
    set(&mut l.max_timeout_ms, options.max_timeout_ms);
    set(&mut l.default_timeout_ms, options.default_timeout_ms);
    set(&mut l.max_memory_bytes, options.max_memory);
    set(&mut l.default_memory_bytes, options.default_memory);
    set(&mut l.max_pids, options.max_pids);
    set(&mut l.default_pids, options.default_pids);
    set(&mut l.max_output_bytes, options.max_output);
    if let Some(c) = options.max_cpus {
        l.max_cpus = c;
    }
    // A lowered maximum lowers the default with it, unless that was set too.
    if options.default_timeout_ms.is_none() {
        l.default_timeout_ms = l.default_timeout_ms.min(l.max_timeout_ms);
    }
    if options.default_memory.is_none() {
        l.default_memory_bytes = l.default_memory_bytes.min(l.max_memory_bytes);
    }
    if options.default_pids.is_none() {
        l.default_pids = l.default_pids.min(l.max_pids);
    }
    if let Some(dir) = options
        .image_store
        .clone()
        .or_else(|| std::env::var_os("ALCOVE_IMAGES").map(PathBuf::from))
    {
        config.image_store = dir;
    }
    config
}

/// The daemon's log: to stderr, the level from $ALCOVE_LOG (or $RUST_LOG),
/// info by default.
fn start_logging(format: crate::cli::LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = std::env::var("ALCOVE_LOG")
        .ok()
        .and_then(|f| EnvFilter::try_new(f).ok())
        .or_else(|| EnvFilter::try_from_default_env().ok())
        // PostgreSQL's notices ("relation already exists") are not news.
        .unwrap_or_else(|| EnvFilter::new("info,tokio_postgres=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false);
    let _ = match format {
        crate::cli::LogFormat::Text => builder.try_init(),
        crate::cli::LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

pub fn run(options: ServeOptions) -> anyhow::Result<()> {
    start_logging(options.log_format);
    // Every sandbox holds pipes, and terminals, here: not a 1024 cap (each
    // sandbox sets its own open-files limit).
    if let Err(e) = alcove_sys::process::raise_open_files_limit() {
        tracing::warn!(error = %e, "could not raise the open-files limit");
    }
    warn_of_shared_watches();
    let given = given_token(&options)?;
    if favor_migrations(options.favordynmods) {
        keep_favoring_migrations();
    }
    let mut config = engine_config(&options);
    cluster_config(&options, &mut config)?;
    if config.shared.is_some() && given.is_none() {
        bail!("daemons on a shared store answer one token: give each the same --token-file FILE or $ALCOVE_TOKEN");
    }
    let mut limits = ServerLimits::default();
    if let Some(n) = options.max_connections {
        limits.max_connections = n.max(1);
    }
    if let Some(t) = options.header_timeout {
        limits.header_timeout = t.max(Duration::from_millis(100));
    }
    if let Some(t) = options.body_timeout {
        limits.body_timeout = t.max(Duration::from_millis(100));
    }
    if let Some(g) = options.shutdown_grace {
        limits.shutdown_grace = g;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(api_workers(options.workers))
        .enable_all()
        .thread_name("alcove-serve")
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        let shared = config.shared.is_some();
        let engine = Engine::open(config).with_context(|| {
            let store = if shared { " and the shared store" } else { "" };
            format!("opening the data directory {}{store}", options.data_dir.display())
        })?;
        let (token, token_place) = match given {
            Some(t) => (t, "the operator's token".to_owned()),
            None => (
                own_token(&options.data_dir)?,
                format!("token in {}", options.data_dir.join(TOKEN_FILE).display()),
            ),
        };
        let listener = tokio::net::TcpListener::bind(options.listen)
            .await
            .with_context(|| {
                format!(
                    "listening on {} (is another daemon there? pick one with --listen)",
                    options.listen
                )
            })?;
        let address = listener.local_addr().context("reading the bound address")?;
        let store = match &engine.config().shared {
            Some(_) => format!("node {}, shared store: PostgreSQL, ", engine.node()),
            None => String::new(),
        };
        eprintln!(
            "alcove: serving http://{address} ({store}data in {}, {token_place})",
            options.data_dir.display(),
        );
        let state = AppState {
            engine: Arc::clone(&engine),
            token: Some(Arc::from(token)),
        };
        alcove_api::serve(listener, app(state), limits, shutdown_signal()).await;
        eprintln!("alcove: stopping: killing what still runs after the grace period");
        let left = engine.shutdown(limits.shutdown_grace).await;
        if left > 0 {
            eprintln!("alcove: {left} invocations did not end in time; their records say so at the next start");
        }
        eprintln!("alcove: stopped");
        anyhow::Ok(())
    })?;
    // Blocking threads still tearing a sandbox down must not hold the exit.
    runtime.shutdown_timeout(Duration::from_secs(1));
    Ok(())
}

/// Mounts the cgroup2 tree `favordynmods` (its other options kept) unless
/// told not to, so that moving a process into a cgroup does not wait for an
/// RCU grace period (alcove_cgroup::migrations). Says what it did, or why
/// not; never fails the start. Whether the option is on now on a cgroup2
/// tree that the daemon may keep it on.
/// Below this many inotify instances per user, the host is warned at start.
const FEW_WATCHES: u64 = 1024;

/// Every sandbox runs as one host user (nobody), and the kernel bounds the
/// file watches (inotify instances) of a user across all its processes: a
/// host left at the default 128 lets one sandbox's code use up every
/// other's watches. Said at start, with the fix; the host's setting is
/// the operator's to change.
fn warn_of_shared_watches() {
    let path = "/proc/sys/fs/inotify/max_user_instances";
    let Ok(text) = std::fs::read_to_string(path) else {
        return;
    };
    match text.trim().parse::<u64>() {
        Ok(n) if n < FEW_WATCHES => tracing::warn!(
            max_user_instances = n,
            "sandboxes share the host's file watches ({path} is {n} for all of them, as one \
             user): one sandbox's code can use them all up; raise it, for example with \
             `sysctl fs.inotify.max_user_instances=8192`"
        ),
        _ => {}
    }
}

fn favor_migrations(wanted: bool) -> bool {
    use alcove_cgroup::MigrationCost;
    let mount = match alcove_cgroup::migrations::migration_cost() {
        Ok(MigrationCost::Slow { mount }) => mount,
        Ok(MigrationCost::Fast { .. }) => return wanted,
        Ok(MigrationCost::NoCgroup2) => {
            tracing::info!(
                "no cgroup2 tree is mounted, and v1 cannot take favordynmods: moving a process \
                 into a cgroup (a warm copy, a fork with memory) waits for an RCU grace period \
                 unless the kernel was built or booted with it"
            );
            return false;
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot tell whether favordynmods is on");
            return false;
        }
    };
    if !wanted {
        tracing::info!(
            mount = %mount.display(),
            "--no-favordynmods: the cgroup2 tree is left without favordynmods; moving a process \
             into a cgroup (a warm copy, a fork with memory) waits for an RCU grace period"
        );
        return false;
    }
    match alcove_cgroup::set_favor_dynmods(true) {
        Ok(_) => {
            tracing::info!(
                mount = %mount.display(),
                "mounted the cgroup2 tree favordynmods (its other options kept): moving a process \
                 into a cgroup takes no RCU grace period (--no-favordynmods leaves it alone)"
            );
            true
        }
        Err(e) => {
            tracing::warn!(
                error = format!("{:#}", anyhow::Error::from(e)),
                "favordynmods could not be set: moving a process into a cgroup (a warm copy, a \
                 fork with memory) waits for an RCU grace period"
            );
            false
        }
    }
}

/// How often the daemon looks whether the cgroup2 tree lost `favordynmods`.
const FAVOR_RECHECK: Duration = Duration::from_secs(5);
/// Put back at most this many times within [`FAVOR_FIGHT_WINDOW`]: past
/// that, something on the host keeps clearing it, and the daemon leaves it
/// off until the window has room again rather than fight the host.
const FAVOR_MAX_RESETS: usize = 5;
const FAVOR_FIGHT_WINDOW: Duration = Duration::from_secs(600);

/// Puts `favordynmods` back when the tree loses it while the daemon runs: a
/// new cgroup2 mount made from the host's cgroup namespace (a container
/// runtime's, for a container sharing it) sets all of the tree's flags from
/// its own options. Looks every [`FAVOR_RECHECK`], on a thread of its own
/// (a read of mountinfo); says each time it puts it back, and when it stops
/// for a while.
fn keep_favoring_migrations() {
    let keeper = move || {
        let mut resets: std::collections::VecDeque<std::time::Instant> = Default::default();
        // Said once each, until things change.
        let (mut unreadable, mut fought) = (false, false);
        loop {
            std::thread::sleep(FAVOR_RECHECK);
            let mount = match alcove_cgroup::migrations::migration_cost() {
                Ok(alcove_cgroup::MigrationCost::Slow { mount }) => mount,
                Ok(_) => {
                    unreadable = false;
                    continue;
                }
                Err(e) => {
                    if !std::mem::replace(&mut unreadable, true) {
                        tracing::warn!(error = %e, "cannot read whether favordynmods is still on");
                    }
                    continue;
                }
            };
            unreadable = false;
            resets.retain(|at| at.elapsed() < FAVOR_FIGHT_WINDOW);
            if resets.len() >= FAVOR_MAX_RESETS {
                if !std::mem::replace(&mut fought, true) {
                    tracing::warn!(
                        mount = %mount.display(),
                        "favordynmods was cleared {FAVOR_MAX_RESETS} times within {} s: something \
                         on the host keeps resetting the cgroup2 tree's options; left off for now \
                         (moving a process into a cgroup waits for an RCU grace period)",
                        FAVOR_FIGHT_WINDOW.as_secs()
                    );
                }
                continue;
            }
            fought = false;
            resets.push_back(std::time::Instant::now());
            match alcove_cgroup::set_favor_dynmods(true) {
                Ok(_) => tracing::warn!(
                    mount = %mount.display(),
                    "the cgroup2 tree had lost favordynmods (a new cgroup2 mount from the host's \
                     cgroup namespace resets its options): set again, its other options kept"
                ),
                Err(e) => tracing::warn!(
                    error = format!("{:#}", anyhow::Error::from(e)),
                    "the cgroup2 tree lost favordynmods and it could not be set again"
                ),
            }
        }
    };
    if let Err(e) = std::thread::Builder::new()
        .name("alcove-favor".into())
        .spawn(keeper)
    {
        tracing::warn!(error = %e, "cannot keep favordynmods on: no thread to watch it");
    }
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
