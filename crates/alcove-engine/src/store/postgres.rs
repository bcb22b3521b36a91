//! The shared store: PostgreSQL, for any number of daemons on any machines.
//! Besides what the SQLite store keeps, it holds the code archives, the
//! async queue (leased jobs, claimed with `FOR UPDATE SKIP LOCKED`) and the
//! cluster-wide concurrency slots. Secrets are sealed with the operator's
//! key ([`SecretBox`]) before they reach the database.
//!
//! The driver is tokio-postgres with a deadpool pool, on a small tokio
//! runtime the store owns (threads named `alcove-store`). Every method
//! blocks: it spawns its work on that runtime and waits on a channel, which
//! works from `spawn_blocking` threads and from another runtime's tasks
//! alike (it never calls `block_on`).
//!
//! TCP connections use TLS where the server offers it (the URL's `sslmode`:
//! `prefer`, the default, `require` or `disable`), through rustls, and the
//! server's certificate is always verified: against the system's roots and
//! the operator's CA file (`--store-ca`); Unix sockets are plain, as in
//! PostgreSQL itself. Lease and due times come from the database's clock
//! (`now()`), never a daemon's. The schema is in [`schema`] (tables named
//! `alcove_*`).
//!
//! When the database goes away, calls fail with
//! [`EngineError::StoreUnavailable`]; dead connections are dropped when the
//! pool checks them out (`RecyclingMethod::Verified`: a socket that is
//! half-open, its peer gone, fails the check too), so calls succeed again
//! once the database is back. TCP keepalives and a user timeout notice a
//! vanished server within seconds, and the server ends a session idle in a
//! transaction, so a daemon cut off mid-transaction holds no lock for long.

use super::{now, ClaimedJob, ClusterRunning, SecretBox, SharedStore, StoreBackend};
use crate::model::{FunctionConfig, FunctionInfo, InvocationRecord, VersionInfo};
use crate::EngineError;
use deadpool_postgres::{
    GenericClient, Manager, ManagerConfig, Pool, PoolError, RecyclingMethod, Runtime, TimeoutType,
};
use std::collections::{BTreeMap, HashSet};
use std::future::Future;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;
use tokio_postgres::config::Host;
use tokio_postgres::types::{FromSql, ToSql};
use tokio_postgres::Row;

#[path = "pg_schema.rs"]
mod schema;

/// Connections one daemon keeps to the database at most.
const MAX_CONNECTIONS: usize = 16;
/// How long one connection attempt may take (unless the URL says).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a call waits for a free connection.
const POOL_WAIT: Duration = Duration::from_secs(5);
/// How long one call may take in all before it fails as unavailable.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// While waiting for the database at start: how often to try, and to log.
const RETRY_EVERY: Duration = Duration::from_secs(1);
const LOG_EVERY: Duration = Duration::from_secs(5);
/// A value sealed with the secrets key, to notice a daemon given another key.
const KEY_CHECK: &str = "secrets_key_check";
const KEY_CHECK_AAD: &[u8] = b"alcove-key-check";
const KEY_CHECK_PLAIN: &[u8] = b"alcove";

/// The store on PostgreSQL shared by several daemons.
pub(crate) struct PgStore {
    ctx: Ctx,
    runtime: StoreRuntime,
}

/// What every call's future needs (cheap to clone).
#[derive(Clone)]
struct Ctx {
    pool: Pool,
    node: Arc<str>,
    /// What this process holds leases as: its node name and a random id of
    /// its own, so that a daemon restarted under the same name (or a reply
    /// lost after a commit) leaves no lease that it keeps renewing.
    lessee: Arc<str>,
    secrets: Arc<SecretBox>,
    /// Where the database is, for messages (never the password).
    target: Arc<str>,
}

/// The store's own runtime; shut down without blocking, so that a store may
/// be dropped anywhere (dropping a runtime inside another one's task panics).
struct StoreRuntime(Option<tokio::runtime::Runtime>);

impl StoreRuntime {
    fn handle(&self) -> Option<&tokio::runtime::Handle> {
        self.0.as_ref().map(tokio::runtime::Runtime::handle)
    }
}

impl Drop for StoreRuntime {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

impl PgStore {
    /// Connects to the database at `url` (a `postgres://` URL or `key=value`
    /// pairs) as node `node`, waiting up to `wait` for it to answer, then
    /// brings its schema up to date and checks that `secrets` is the key the
    /// stored secrets were sealed with. `ca_file` (PEM) adds to the roots
    /// a server's certificate may chain to.
    pub(crate) fn open(
        url: &str,
        node: &str,
        secrets: SecretBox,
        wait: Duration,
        ca_file: Option<&std::path::Path>,
    ) -> Result<PgStore, EngineError> {
        let tls = tls_config(ca_file)?;
        let mut config = tokio_postgres::Config::from_str(url).map_err(|e| {
            let why =
                std::error::Error::source(&e).map_or_else(|| e.to_string(), |s| s.to_string());
            EngineError::Invalid(format!("the shared store's URL is not valid: {why}"))
        })?;
        if config.get_hosts().is_empty() && config.get_hostaddrs().is_empty() {
            return Err(EngineError::Invalid(
                "the shared store's URL names no host: give one, such as postgres://alcove@db.example/alcove"
                    .to_owned(),
            ));
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        config
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(5))
            .keepalives_interval(Duration::from_secs(2))
            .keepalives_retries(3)
            .tcp_user_timeout(Duration::from_secs(10));
        let options = config.get_options().unwrap_or_default().to_owned();
        config.options(
            format!("{options} -c idle_in_transaction_session_timeout=10s -c lock_timeout=10s")
                .trim(),
        );
        if config.get_application_name().is_none() {
            config.application_name(format!("alcove {node}"));
        }
        let target: Arc<str> = describe(&config).into();
        let manager = Manager::from_config(
            config,
            tokio_postgres_rustls::MakeRustlsConnect::new(tls),
            ManagerConfig {
                recycling_method: RecyclingMethod::Verified,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(MAX_CONNECTIONS)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(POOL_WAIT))
            .create_timeout(Some(CONNECT_TIMEOUT + Duration::from_secs(2)))
            .recycle_timeout(Some(CONNECT_TIMEOUT))
            .build()
            .map_err(|e| {
                EngineError::Internal(format!("the connection pool does not build: {e}"))
            })?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("alcove-store")
            .enable_all()
            .build()
            .map_err(EngineError::io("starting the shared store's threads"))?;
        let store = PgStore {
            ctx: Ctx {
                pool,
                node: node.into(),
                lessee: format!("{node}/{}", &alcove_sys::process::random_id()[..12]).into(),
                secrets: Arc::new(secrets),
                target,
            },
            runtime: StoreRuntime(Some(runtime)),
        };
        store.call(wait + CALL_TIMEOUT, |ctx| async move {
            let mut client = ctx.connect_patiently(wait).await?;
            migrate(&mut client).await?;
            ctx.check_key(&client).await
        })?;
        Ok(store)
    }

    /// Runs `op` on the store's runtime and waits for its answer.
    fn run<T, F>(&self, op: impl FnOnce(Ctx) -> F) -> Result<T, EngineError>
    where
        T: Send + 'static,
        F: Future<Output = Result<T, EngineError>> + Send + 'static,
    {
        self.call(CALL_TIMEOUT, op)
    }

    fn call<T, F>(&self, limit: Duration, op: impl FnOnce(Ctx) -> F) -> Result<T, EngineError>
    where
        T: Send + 'static,
        F: Future<Output = Result<T, EngineError>> + Send + 'static,
    {
        let handle = self.runtime.handle().ok_or_else(|| {
            EngineError::Internal("the shared store's runtime is gone".to_owned())
        })?;
        let future = op(self.ctx.clone());
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        handle.spawn(async move {
            let answer = tokio::time::timeout(limit, future)
                .await
                .unwrap_or_else(|_| {
                    Err(EngineError::StoreUnavailable(format!(
                        "the database did not answer within {} s",
                        limit.as_secs()
                    )))
                });
            // The caller waits on the other end; it is only gone if it panicked.
            let _ = tx.send(answer);
        });
        rx.recv().unwrap_or_else(|_| {
            Err(EngineError::Internal(
                "a shared store call ended without an answer".to_owned(),
            ))
        })
    }
}

/// "host:port" for each host the configuration names (no credentials).
/// The TLS client: the system's roots and the operator's CA file; ring as
/// the crypto provider (no C toolchain beyond the compiler is needed).
fn tls_config(ca_file: Option<&std::path::Path>) -> Result<rustls::ClientConfig, EngineError> {
    use rustls::pki_types::{pem::PemObject, CertificateDer};
    let mut roots = rustls::RootCertStore::empty();
    // Unreadable system roots leave only the CA file: not an error here.
    let (added, _) =
        roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
    let mut ours = 0;
    if let Some(path) = ca_file {
        let bad = |why: String| {
            EngineError::Invalid(format!(
                "the shared store's CA file {}: {why} (give a PEM file of CA certificates)",
                path.display()
            ))
        };
        let certs = CertificateDer::pem_file_iter(path)
            .map_err(|e| bad(e.to_string()))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad(e.to_string()))?;
        for cert in certs {
            roots.add(cert).map_err(|e| bad(e.to_string()))?;
            ours += 1;
        }
        if ours == 0 {
            return Err(bad("it holds no certificate".into()));
        }
    }
    tracing::debug!(
        "TLS roots for the shared store: {added} from the system, {ours} from the CA file"
    );
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| EngineError::Internal(format!("TLS for the shared store: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

fn describe(config: &tokio_postgres::Config) -> String {
    let ports = config.get_ports();
    let port = |i: usize| ports.get(i).or(ports.first()).copied().unwrap_or(5432);
    let mut places: Vec<String> = config
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(i, host)| match host {
            Host::Tcp(name) => format!("{name}:{}", port(i)),
            Host::Unix(dir) => format!("{}/.s.PGSQL.{}", dir.display(), port(i)),
        })
        .collect();
    if places.is_empty() {
        places = config
            .get_hostaddrs()
            .iter()
            .enumerate()
            .map(|(i, addr)| format!("{addr}:{}", port(i)))
            .collect();
    }
    places.join(", ")
}

/// Why a driver error happened, in the database's or the system's words.
fn reason(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return db.message().to_owned();
    }
    let mut deepest: &dyn std::error::Error = e;
    while let Some(source) = deepest.source() {
        deepest = source;
    }
    match deepest
        .downcast_ref::<std::io::Error>()
        .map(std::io::Error::kind)
    {
        Some(std::io::ErrorKind::ConnectionRefused) => "connection refused".to_owned(),
        Some(std::io::ErrorKind::NotFound) => {
            "no server is listening there (no such socket)".to_owned()
        }
        _ => deepest.to_string(),
    }
}

/// Whether the error means the connection or the server went away.
fn connection_lost(e: &tokio_postgres::Error) -> bool {
    if let Some(db) = e.as_db_error() {
        // 08: connection exception; 57P0x: server shutting down or starting;
        // 53300: too many connections.
        let code = db.code().code();
        return code.starts_with("08") || code.starts_with("57P") || code == "53300";
    }
    e.is_closed()
        || std::error::Error::source(e)
            .is_some_and(|s| s.downcast_ref::<std::io::Error>().is_some())
}

/// A driver error as an engine error.
fn pg(e: tokio_postgres::Error) -> EngineError {
    if connection_lost(&e) {
        EngineError::StoreUnavailable(format!(
            "the connection to the database failed: {}",
            reason(&e)
        ))
    } else {
        EngineError::SharedStore(e)
    }
}

fn col<'a, T: FromSql<'a>>(row: &'a Row, index: usize) -> Result<T, EngineError> {
    row.try_get(index).map_err(pg)
}

fn out_of_range(what: &str, value: impl std::fmt::Display) -> EngineError {
    EngineError::Internal(format!(
        "the shared store holds {what} {value}, out of range"
    ))
}

fn u32_col(row: &Row, index: usize, what: &str) -> Result<u32, EngineError> {
    let v: i32 = col(row, index)?;
    u32::try_from(v).map_err(|_| out_of_range(what, v))
}

fn u64_opt_col(row: &Row, index: usize, what: &str) -> Result<Option<u64>, EngineError> {
    col::<Option<i64>>(row, index)?
        .map(|v| u64::try_from(v).map_err(|_| out_of_range(what, v)))
        .transpose()
}

fn int(v: u32) -> Result<i32, EngineError> {
    i32::try_from(v).map_err(|_| {
        EngineError::Invalid(format!("{v} is too large a number for the shared store"))
    })
}

fn bigint(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// What a secret's sealed value is bound to.
fn secret_aad(function: &str, version: u32, name: &str) -> Vec<u8> {
    format!("{function}\0{version}\0{name}").into_bytes()
}

async fn query(
    c: &impl GenericClient,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<Vec<Row>, EngineError> {
    let statement = c.prepare_cached(sql).await.map_err(pg)?;
    c.query(&statement, params).await.map_err(pg)
}

async fn query_opt(
    c: &impl GenericClient,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<Option<Row>, EngineError> {
    let statement = c.prepare_cached(sql).await.map_err(pg)?;
    c.query_opt(&statement, params).await.map_err(pg)
}

async fn query_one(
    c: &impl GenericClient,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<Row, EngineError> {
    let statement = c.prepare_cached(sql).await.map_err(pg)?;
    c.query_one(&statement, params).await.map_err(pg)
}

async fn execute(
    c: &impl GenericClient,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<u64, EngineError> {
    let statement = c.prepare_cached(sql).await.map_err(pg)?;
    c.execute(&statement, params).await.map_err(pg)
}

impl Ctx {
    /// A connection from the pool.
    async fn client(&self) -> Result<deadpool_postgres::Client, EngineError> {
        let target = &self.target;
        self.pool.get().await.map_err(|e| match e {
            PoolError::Timeout(TimeoutType::Wait) => EngineError::StoreUnavailable(format!(
                "all {MAX_CONNECTIONS} connections to {target} stayed busy for {} s",
                POOL_WAIT.as_secs()
            )),
            PoolError::Timeout(TimeoutType::Create) => EngineError::StoreUnavailable(format!(
                "connecting to {target}: no answer within {} s",
                CONNECT_TIMEOUT.as_secs() + 2
            )),
            PoolError::Timeout(TimeoutType::Recycle) => EngineError::StoreUnavailable(format!(
                "checking a connection to {target}: no answer within {} s",
                CONNECT_TIMEOUT.as_secs()
            )),
            PoolError::Backend(e) => {
                EngineError::StoreUnavailable(format!("connecting to {target}: {}", reason(&e)))
            }
            PoolError::Closed => {
                EngineError::StoreUnavailable("the connection pool is closed".to_owned())
            }
            other => EngineError::Internal(format!("the connection pool failed: {other}")),
        })
    }

    /// A connection that answers, trying every second until `wait` has passed.
    async fn connect_patiently(
        &self,
        wait: Duration,
    ) -> Result<deadpool_postgres::Client, EngineError> {
        let started = tokio::time::Instant::now();
        let deadline = started + wait;
        let mut logged: Option<tokio::time::Instant> = None;
        loop {
            let attempt = tokio::time::Instant::now();
            let failure = match self.client().await {
                Ok(client) => match client.simple_query("SELECT 1").await {
                    Ok(_) => return Ok(client),
                    Err(e) => pg(e),
                },
                Err(e) => e,
            };
            let EngineError::StoreUnavailable(why) = failure else {
                return Err(failure);
            };
            if tokio::time::Instant::now() >= deadline {
                return Err(EngineError::StoreUnavailable(format!(
                    "{why} (waited {} s)",
                    started.elapsed().as_secs()
                )));
            }
            if logged.is_none_or(|at| at.elapsed() >= LOG_EVERY) {
                tracing::warn!("waiting for the shared store: {why}");
                logged = Some(tokio::time::Instant::now());
            }
            tokio::time::sleep_until((attempt + RETRY_EVERY).min(deadline)).await;
        }
    }

    /// Refuses a key other than the one the stored secrets were sealed with;
    /// the first daemon records its key's check value.
    async fn check_key(&self, client: &deadpool_postgres::Client) -> Result<(), EngineError> {
        const READ: &str = "SELECT value FROM alcove_meta WHERE key = $1";
        let mut stored = query_opt(client, READ, &[&KEY_CHECK]).await?;
        if stored.is_none() {
            let sealed = self.secrets.seal(KEY_CHECK_AAD, KEY_CHECK_PLAIN);
            execute(
                client,
                "INSERT INTO alcove_meta (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING",
                &[&KEY_CHECK, &sealed],
            )
            .await?;
            stored = query_opt(client, READ, &[&KEY_CHECK]).await?;
        }
        let sealed: Vec<u8> = match &stored {
            Some(row) => col(row, 0)?,
            None => {
                return Err(EngineError::Internal(
                    "the secrets key check vanished".to_owned(),
                ))
            }
        };
        match self.secrets.open(KEY_CHECK_AAD, &sealed) {
            Ok(plain) if plain == KEY_CHECK_PLAIN => Ok(()),
            _ => Err(EngineError::Invalid(
                "the secrets key does not match the one this shared store's secrets were sealed with: give every daemon the same key"
                    .to_owned(),
            )),
        }
    }
}

/// Brings the schema up to date, in one transaction under an advisory lock.
async fn migrate(client: &mut deadpool_postgres::Client) -> Result<(), EngineError> {
    let tx = client.transaction().await.map_err(pg)?;
    tx.execute(
        "SELECT pg_advisory_xact_lock($1)",
        &[&schema::MIGRATION_LOCK],
    )
    .await
    .map_err(pg)?;
    tx.batch_execute("CREATE TABLE IF NOT EXISTS alcove_schema (version INTEGER NOT NULL)")
        .await
        .map_err(pg)?;
    let row = tx
        .query_one("SELECT COALESCE(MAX(version), 0) FROM alcove_schema", &[])
        .await
        .map_err(pg)?;
    let current = usize::try_from(col::<i32>(&row, 0)?)
        .map_err(|_| out_of_range("schema version", "below 0"))?;
    let known = schema::STEPS.len();
    if current > known {
        return Err(EngineError::Invalid(format!(
            "the shared store's schema is at step {current}, newer than this daemon knows ({known}): upgrade this daemon"
        )));
    }
    if current == known {
        return tx.commit().await.map_err(pg);
    }
    for step in &schema::STEPS[current..] {
        tx.batch_execute(step).await.map_err(pg)?;
    }
    let version = i32::try_from(known).map_err(|_| out_of_range("schema steps", known))?;
    tx.execute("DELETE FROM alcove_schema", &[])
        .await
        .map_err(pg)?;
    tx.execute(
        "INSERT INTO alcove_schema (version) VALUES ($1)",
        &[&version],
    )
    .await
    .map_err(pg)?;
    tx.commit().await.map_err(pg)?;
    tracing::info!("the shared store's schema went from step {current} to {known}");
    Ok(())
}

const SELECT_INVOCATION: &str = "SELECT id, function, version, status, is_async, attempts, created_at, started_at,
    ended_at, exit_code, signal, wall_ms, cpu_user_ms, cpu_sys_ms, memory_peak_bytes, pids_peak, output_truncated,
    error, stderr, response, kernel, node, nodes, request_bytes, response_bytes FROM alcove_invocations";

/// Inserts a new record only while its version exists (the version row is
/// share-locked, so a function deleted meanwhile takes the record with it).
const INSERT_INVOCATION: &str = "INSERT INTO alcove_invocations
    (id, function, version, status, is_async, attempts, created_at, started_at, node, nodes)
    SELECT $1::text, $2::text, $3::int4, $4::text, $5::bool, $6::int4, $7::float8, $8::float8, $9::text, $10::text
    WHERE EXISTS (SELECT 1 FROM alcove_versions WHERE function = $2 AND version = $3 FOR KEY SHARE)";

fn record(r: &Row) -> Result<InvocationRecord, EngineError> {
    let stderr: Option<Vec<u8>> = col(r, 18)?;
    Ok(InvocationRecord {
        id: col(r, 0)?,
        function: col(r, 1)?,
        version: u32_col(r, 2, "a version")?,
        status: col(r, 3)?,
        is_async: col(r, 4)?,
        attempts: u32_col(r, 5, "an attempt count")?,
        created_at: col(r, 6)?,
        started_at: col(r, 7)?,
        ended_at: col(r, 8)?,
        exit_code: col(r, 9)?,
        signal: col(r, 10)?,
        wall_ms: col(r, 11)?,
        cpu_user_ms: col(r, 12)?,
        cpu_sys_ms: col(r, 13)?,
        memory_peak_bytes: u64_opt_col(r, 14, "a memory peak")?,
        pids_peak: u64_opt_col(r, 15, "a pids peak")?,
        output_truncated: col(r, 16)?,
        error: col(r, 17)?,
        stderr: String::from_utf8_lossy(&stderr.unwrap_or_default()).into_owned(),
        response: col(r, 19)?,
        warm: None,
        kernel: col::<Option<String>>(r, 20)?.and_then(|k| serde_json::from_str(&k).ok()),
        node: col(r, 21)?,
        nodes: col::<Option<String>>(r, 22)?
            .and_then(|n| serde_json::from_str(&n).ok())
            .unwrap_or_default(),
        request_bytes: u64_opt_col(r, 23, "a request size")?,
        response_bytes: u64_opt_col(r, 24, "a response size")?,
    })
}

fn nodes_json(nodes: &[String]) -> Option<String> {
    (!nodes.is_empty()).then(|| serde_json::to_string(nodes).unwrap_or_default())
}

/// Inserts `r` (node defaulting to `node`); NoFunction when its version is gone.
async fn insert_record(
    c: &impl GenericClient,
    r: &InvocationRecord,
    node: Option<&str>,
) -> Result<(), EngineError> {
    let node = r.node.as_deref().or(node);
    let inserted = execute(
        c,
        INSERT_INVOCATION,
        &[
            &r.id,
            &r.function,
            &int(r.version)?,
            &r.status,
            &r.is_async,
            &int(r.attempts)?,
            &r.created_at,
            &r.started_at,
            &node,
            &nodes_json(&r.nodes),
        ],
    )
    .await?;
    if inserted == 0 {
        return Err(EngineError::NoFunction(r.function.clone()));
    }
    Ok(())
}

impl StoreBackend for PgStore {
    fn recover(&self) -> Result<usize, EngineError> {
        self.run(|ctx| async move {
            let client = ctx.client().await?;
            let error = format!(
                "the daemon on node {} stopped before this invocation finished",
                ctx.node
            );
            let n = execute(
                &client,
                "UPDATE alcove_invocations i SET status = 'error', ended_at = $2, error = $3
                 WHERE i.node = $1 AND i.status IN ('queued', 'running')
                 AND NOT EXISTS (SELECT 1 FROM alcove_queue q WHERE q.id = i.id)",
                &[&&*ctx.node, &now(), &error],
            )
            .await?;
            Ok(usize::try_from(n).unwrap_or(usize::MAX))
        })
    }

    fn add_version(
        &self,
        name: &str,
        config: &FunctionConfig,
        code_digest: Option<&str>,
        secrets: &BTreeMap<String, Vec<u8>>,
    ) -> Result<VersionInfo, EngineError> {
        let name = name.to_owned();
        let config = config.clone();
        let code_digest = code_digest.map(str::to_owned);
        let secrets = secrets.clone();
        self.run(move |ctx| async move {
            let config_json = serde_json::to_string(&config)
                .map_err(|e| EngineError::Internal(format!("a config does not serialise: {e}")))?;
            let mut client = ctx.client().await?;
            let tx = client.transaction().await.map_err(pg)?;
            let created_at = now();
            // Lock the function's row, so that deploys of one name from two
            // daemons number their versions one after the other. The row can
            // vanish between the two statements (a delete), hence the loop.
            let mut locked = false;
            for _ in 0..3 {
                execute(
                    &tx,
                    "INSERT INTO alcove_functions (name, latest, created_at) VALUES ($1, 0, $2)
                     ON CONFLICT (name) DO NOTHING",
                    &[&name, &created_at],
                )
                .await?;
                let row = query_opt(&tx, "SELECT latest FROM alcove_functions WHERE name = $1 FOR UPDATE", &[&name]).await?;
                if row.is_some() {
                    locked = true;
                    break;
                }
            }
            if !locked {
                return Err(EngineError::Conflict(
                    "function_changing",
                    format!("function {name:?} was being deleted while this version was added: try again"),
                ));
            }
            let row = query_one(
                &tx,
                "SELECT COALESCE(MAX(version), 0) + 1 FROM alcove_versions WHERE function = $1",
                &[&name],
            )
            .await?;
            let version = u32_col(&row, 0, "a version")?;
            let v = int(version)?;
            execute(
                &tx,
                "INSERT INTO alcove_versions (function, version, config, code_digest, created_at)
                 VALUES ($1, $2, $3, $4, $5)",
                &[&name, &v, &config_json, &code_digest, &created_at],
            )
            .await?;
            for (secret, value) in &secrets {
                let sealed = ctx.secrets.seal(&secret_aad(&name, version, secret), value);
                execute(
                    &tx,
                    "INSERT INTO alcove_secrets (function, version, name, value) VALUES ($1, $2, $3, $4)",
                    &[&name, &v, secret, &sealed],
                )
                .await?;
            }
            execute(&tx, "UPDATE alcove_functions SET latest = $2 WHERE name = $1", &[&name, &v]).await?;
            tx.commit().await.map_err(pg)?;
            Ok(VersionInfo {
                function: name,
                version,
                code_digest,
                config,
                created_at,
            })
        })
    }

    fn function_names(&self) -> Result<Vec<String>, EngineError> {
        self.run(|ctx| async move {
            let client = ctx.client().await?;
            let rows = query(
                &client,
                "SELECT name FROM alcove_functions ORDER BY name",
                &[],
            )
            .await?;
            rows.iter().map(|r| col(r, 0)).collect()
        })
    }

    fn function(&self, name: &str) -> Result<FunctionInfo, EngineError> {
        let name = name.to_owned();
        self.run(move |ctx| async move {
            let client = ctx.client().await?;
            let latest = match query_opt(
                &client,
                "SELECT latest FROM alcove_functions WHERE name = $1",
                &[&name],
            )
            .await?
            {
                Some(row) => u32_col(&row, 0, "a version")?,
                None => return Err(EngineError::NoFunction(name)),
            };
            let rows = query(
                &client,
                "SELECT version, config, code_digest, created_at FROM alcove_versions
                 WHERE function = $1 ORDER BY version",
                &[&name],
            )
            .await?;
            let versions = rows
                .iter()
                .map(|r| {
                    let config: String = col(r, 1)?;
                    Ok(VersionInfo {
                        function: name.clone(),
                        version: u32_col(r, 0, "a version")?,
                        config: serde_json::from_str(&config).map_err(|e| {
                            EngineError::Internal(format!(
                                "a stored config of {name:?} does not parse: {e}"
                            ))
                        })?,
                        code_digest: col(r, 2)?,
                        created_at: col(r, 3)?,
                    })
                })
                .collect::<Result<Vec<_>, EngineError>>()?;
            Ok(FunctionInfo {
                name,
                latest,
                versions,
            })
        })
    }

    fn latest(&self, name: &str) -> Result<Option<u32>, EngineError> {
        let name = name.to_owned();
        self.run(move |ctx| async move {
            let client = ctx.client().await?;
            query_opt(
                &client,
                "SELECT latest FROM alcove_functions WHERE name = $1",
                &[&name],
            )
            .await?
            .map(|row| u32_col(&row, 0, "a version"))
            .transpose()
        })
    }

    fn set_latest(&self, name: &str, version: u32) -> Result<(), EngineError> {
        let name = name.to_owned();
        self.run(move |ctx| async move {
            let client = ctx.client().await?;
            let v = int(version)?;
            let n = execute(
                &client,
                "UPDATE alcove_functions SET latest = $2 WHERE name = $1
                 AND EXISTS (SELECT 1 FROM alcove_versions WHERE function = $1 AND version = $2)",
                &[&name, &v],
            )
            .await?;
            if n == 0 {
                return Err(EngineError::NoVersion(name, version));
            }
            Ok(())
        })
    }

    fn remove_version(
        &self,
        name: &str,
        version: u32,
        previous: Option<u32>,
    ) -> Result<(), EngineError> {
        let name = name.to_owned();
        self.run(move |ctx| async move {
            let v = int(version)?;
            let mut client = ctx.client().await?;
            let tx = client.transaction().await.map_err(pg)?;
            execute(
                &tx,
                "DELETE FROM alcove_secrets WHERE function = $1 AND version = $2",
                &[&name, &v],
            )
            .await?;
            execute(
                &tx,
                "DELETE FROM alcove_versions WHERE function = $1 AND version = $2",
                &[&name, &v],
            )
            .await?;
            match previous {
                Some(previous) => {
                    execute(
                        &tx,
                        "UPDATE alcove_functions SET latest = $2 WHERE name = $1",
                        &[&name, &int(previous)?],
                    )
                    .await?
                }
                None => {
                    execute(
                        &tx,
                        "DELETE FROM alcove_functions WHERE name = $1",
                        &[&name],
                    )
                    .await?
                }
            };
            tx.commit().await.map_err(pg)
        })
    }

    fn delete_function(&self, name: &str) -> Result<(), EngineError> {
        let name = name.to_owned();
        self.run(move |ctx| async move {
            let mut client = ctx.client().await?;
            let tx = client.transaction().await.map_err(pg)?;
            // Versions, secrets and the learned profile go with it (cascade).
            let n = execute(
                &tx,
                "DELETE FROM alcove_functions WHERE name = $1",
                &[&name],
            )
            .await?;
            if n == 0 {
                return Err(EngineError::NoFunction(name));
            }
            execute(
                &tx,
                "DELETE FROM alcove_queue WHERE function = $1",
                &[&name],
            )
            .await?;
            execute(
                &tx,
                "DELETE FROM alcove_slots WHERE function = $1",
                &[&name],
            )
            .await?;
            execute(
                &tx,
                "DELETE FROM alcove_invocations WHERE function = $1",
                &[&name],
            )
            .await?;
            tx.commit().await.map_err(pg)
        })
    }

    fn code_digests(&self) -> Result<HashSet<String>, EngineError> {
        self.run(|ctx| async move {
            let client = ctx.client().await?;
            let rows = query(
                &client,
                "SELECT DISTINCT code_digest FROM alcove_versions WHERE code_digest IS NOT NULL",
                &[],
            )
            .await?;
            rows.iter().map(|r| col(r, 0)).collect()
        })
    }

    fn purge_invocations(&self, before: f64) -> Result<usize, EngineError> {
        self.run(move |ctx| async move {
            let client = ctx.client().await?;
            let n = execute(
                &client,
                "DELETE FROM alcove_invocations WHERE created_at < $1 AND status NOT IN ('queued', 'running')",
                &[&before],
            )
            .await?;
            Ok(usize::try_from(n).unwrap_or(usize::MAX))
        })
    }

    /// Records a new invocation; its node is this daemon's unless it names one.
    fn insert_invocation(&self, r: &InvocationRecord) -> Result<(), EngineError> {
        let r = r.clone();
        self.run(move |ctx| async move {
            let client = ctx.client().await?;
            insert_record(&client, &r, Some(&ctx.node)).await
        })
    }

    fn update_invocation(&self, r: &InvocationRecord) -> Result<(), EngineError> {
        let r = r.clone();
        self.run(move |ctx| async move {
            let client = ctx.client().await?;
            let kernel = r.kernel.as_ref().and_then(|k| serde_json::to_string(k).ok());
            let written = execute(
                &client,
                "UPDATE alcove_invocations SET status = $2, attempts = $3, started_at = $4, ended_at = $5,
                 exit_code = $6, signal = $7, wall_ms = $8, cpu_user_ms = $9, cpu_sys_ms = $10,
                 memory_peak_bytes = $11, pids_peak = $12, output_truncated = $13, error = $14,
                 stderr = $15, response = $16, kernel = $17, node = $18, nodes = $19,
                 request_bytes = $21, response_bytes = $22
                 WHERE id = $1 AND attempts <= $3
                 AND (NOT is_async OR EXISTS (SELECT 1 FROM alcove_queue q
                                              WHERE q.id = $1 AND q.leased_by = $20))",
                &[
                    &r.id,
                    &r.status,
                    &int(r.attempts)?,
                    &r.started_at,
                    &r.ended_at,
                    &r.exit_code,
                    &r.signal,
                    &r.wall_ms,
                    &r.cpu_user_ms,
                    &r.cpu_sys_ms,
                    &r.memory_peak_bytes.map(bigint),
                    &r.pids_peak.map(bigint),
                    &r.output_truncated,
                    &r.error,
                    &r.stderr.as_bytes(),
                    &r.response,
                    &kernel,
                    &r.node,
                    &nodes_json(&r.nodes),
                    // Fencing: an async invocation's record is written only
                    // by the process holding its job's lease (while the job is
                    // queued: its holder writes the end before taking it out),
                    // never by an older attempt over a newer one, so a daemon
                    // whose lease lapsed cannot overwrite what the next holder
                    // records, even after that one has finished.
                    &&*ctx.lessee,
                    &r.request_bytes.map(bigint),
                    &r.response_bytes.map(bigint),
                ],
            )
            .await?;
            if written == 0 && r.is_async {
                return Err(EngineError::Conflict(
                    "lease_lost",
                    format!(
                        "invocation {} is no longer this daemon's: its lease lapsed and another daemon took it",
                        r.id
                    ),
                ));
            }
            Ok(())
        })
    }

    fn invocation(&self, id: &str) -> Result<InvocationRecord, EngineError> {
        let id = id.to_owned();
        self.run(move |ctx| async move {
            let client = ctx.client().await?;
            match query_opt(
                &client,
                &format!("{SELECT_INVOCATION} WHERE id = $1"),
                &[&id],
            )
            .await?
            {
                Some(row) => record(&row),
                None => Err(EngineError::NoInvocation(id)),
            }
        })
    }

    fn recent_invocations(
        &self,
        function: &str,
        filter: &super::InvocationFilter,
    ) -> Result<Vec<InvocationRecord>, EngineError> {
        let function = function.to_owned();
        let (status, at, id) = filter.params();
        let limit = i64::from(filter.limit);
        self.run(move |ctx| async move {
            let client = ctx.client().await?;
            let rows = query(
                &client,
                &format!(
                    "{SELECT_INVOCATION} WHERE {} LIMIT $5",
                    super::filtered_invocations("alcove_invocations", "$")
                ),
                &[&function, &status, &at, &id, &limit],
            )
            .await?;
            rows.iter().map(record).collect()
        })
    }

    fn learned(
        &self,
        function: &str,
    ) -> Result<Option<(alcove_monitor::Profile, u64)>, EngineError> {
        let function = function.to_owned();
        self.run(move |ctx| async move {
            let client = ctx.client().await?;
            let Some(row) = query_opt(
                &client,
                "SELECT profile, invocations FROM alcove_learned WHERE function = $1",
                &[&function],
            )
            .await?
            else {
                return Ok(None);
            };
            let text: String = col(&row, 0)?;
            let n: i64 = col(&row, 1)?;
            let n = u64::try_from(n).map_err(|_| out_of_range("an invocation count", n))?;
            Ok(serde_json::from_str(&text).ok().map(|profile| (profile, n)))
        })
    }

    fn set_learned(
        &self,
        function: &str,
        profile: &alcove_monitor::Profile,
        invocations: u64,
    ) -> Result<(), EngineError> {
        let function = function.to_owned();
        let text = serde_json::to_string(profile)
            .map_err(|e| EngineError::Internal(format!("a profile does not serialise: {e}")))?;
        self.run(move |ctx| async move {
            let client = ctx.client().await?;
            execute(
                &client,
                "INSERT INTO alcove_learned (function, profile, invocations, updated_at) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (function) DO UPDATE SET profile = $2, invocations = $3, updated_at = $4",
                &[&function, &text, &bigint(invocations), &now()],
            )
            .await?;
            Ok(())
        })
    }

    fn forget_learned(&self, function: &str) -> Result<(), EngineError> {
        let function = function.to_owned();
        self.run(move |ctx| async move {
            let client = ctx.client().await?;
            execute(
                &client,
                "DELETE FROM alcove_learned WHERE function = $1",
                &[&function],
            )
            .await?;
            Ok(())
        })
    }

    fn secrets(
        &self,
        function: &str,
        version: u32,
    ) -> Result<BTreeMap<String, Vec<u8>>, EngineError> {
        let function = function.to_owned();
        self.run(move |ctx| async move {
            let client = ctx.client().await?;
            let rows = query(
                &client,
                "SELECT name, value FROM alcove_secrets WHERE function = $1 AND version = $2",
                &[&function, &int(version)?],
            )
            .await?;
            rows.iter()
                .map(|r| {
                    let name: String = col(r, 0)?;
                    let sealed: Vec<u8> = col(r, 1)?;
                    let value = ctx
                        .secrets
                        .open(&secret_aad(&function, version, &name), &sealed)?;
                    Ok((name, value))
                })
                .collect()
        })
    }

    fn shared(&self) -> Option<&dyn SharedStore> {
        Some(self)
    }
}

#[path = "pg_shared.rs"]
mod shared;

#[cfg(test)]
impl PgStore {
    /// Whether the database answers now.
    fn ping(&self) -> Result<(), EngineError> {
        self.run(|ctx| async move {
            let client = ctx.client().await?;
            client.simple_query("SELECT 1").await.map_err(pg)?;
            Ok(())
        })
    }
}

#[cfg(test)]
#[path = "postgres_tests.rs"]
mod tests;
