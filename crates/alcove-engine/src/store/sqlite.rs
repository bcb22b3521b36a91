//! The single-machine store: SQLite (WAL), one file in the data directory.
//! Functions, versions, secrets and invocations; a deploy is one
//! transaction, so a daemon killed mid-deploy leaves either the whole
//! version or none of it.

use super::{now, StoreBackend};
use crate::model::{FunctionConfig, FunctionInfo, InvocationRecord, VersionInfo};
use crate::EngineError;
use rusqlite::{params, Connection, OptionalExtension};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;

pub(crate) struct SqliteStore {
    conn: Mutex<Connection>,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS functions (
    name TEXT PRIMARY KEY,
    latest INTEGER NOT NULL,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS versions (
    function TEXT NOT NULL REFERENCES functions(name) ON DELETE CASCADE,
    version INTEGER NOT NULL,
    config TEXT NOT NULL,
    code_digest TEXT,
    created_at REAL NOT NULL,
    PRIMARY KEY (function, version)
);
CREATE TABLE IF NOT EXISTS secrets (
    function TEXT NOT NULL,
    version INTEGER NOT NULL,
    name TEXT NOT NULL,
    value BLOB NOT NULL,
    PRIMARY KEY (function, version, name),
    FOREIGN KEY (function, version) REFERENCES versions(function, version) ON DELETE CASCADE
);
CREATE TABLE IF NOT EXISTS invocations (
    id TEXT PRIMARY KEY,
    function TEXT NOT NULL,
    version INTEGER NOT NULL,
    status TEXT NOT NULL,
    is_async INTEGER NOT NULL,
    attempts INTEGER NOT NULL,
    created_at REAL NOT NULL,
    started_at REAL,
    ended_at REAL,
    exit_code INTEGER,
    signal INTEGER,
    wall_ms REAL,
    cpu_user_ms REAL,
    cpu_sys_ms REAL,
    memory_peak_bytes INTEGER,
    pids_peak INTEGER,
    output_truncated INTEGER NOT NULL DEFAULT 0,
    error TEXT,
    stderr BLOB,
    response BLOB
);
CREATE INDEX IF NOT EXISTS invocations_by_function ON invocations(function, created_at);
CREATE TABLE IF NOT EXISTS learned (
    function TEXT PRIMARY KEY REFERENCES functions(name) ON DELETE CASCADE,
    profile TEXT NOT NULL,
    invocations INTEGER NOT NULL,
    updated_at REAL NOT NULL
);
";

fn db(e: rusqlite::Error) -> EngineError {
    EngineError::Store(e)
}

impl SqliteStore {
    pub(crate) fn open(path: &Path) -> Result<Self, EngineError> {
        let conn = Connection::open(path).map_err(db)?;
        // WAL with synchronous=NORMAL survives a killed process (only power
        // loss can take the last transactions).
        conn.execute_batch(
            "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA foreign_keys=ON; PRAGMA busy_timeout=5000;",
        )
        .map_err(db)?;
        conn.execute_batch(SCHEMA).map_err(db)?;
        // Added after the first release: what the kernel saw (JSON).
        let has_kernel: bool = conn
            .query_row(
                "SELECT COUNT(*) FROM pragma_table_info('invocations') WHERE name = 'kernel'",
                [],
                |r| r.get::<_, i64>(0),
            )
            .map_err(db)?
            > 0;
        if !has_kernel {
            conn.execute_batch("ALTER TABLE invocations ADD COLUMN kernel TEXT")
                .map_err(db)?;
        }
        for (column, kind) in [
            ("node", "TEXT"),
            ("nodes", "TEXT"),
            ("request_bytes", "INTEGER"),
            ("response_bytes", "INTEGER"),
        ] {
            let has: bool = conn
                .query_row(
                    "SELECT COUNT(*) FROM pragma_table_info('invocations') WHERE name = ?1",
                    [column],
                    |r| r.get::<_, i64>(0),
                )
                .map_err(db)?
                > 0;
            if !has {
                conn.execute_batch(&format!(
                    "ALTER TABLE invocations ADD COLUMN {column} {kind}"
                ))
                .map_err(db)?;
            }
        }
        Ok(SqliteStore {
            conn: Mutex::new(conn),
        })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl StoreBackend for SqliteStore {
    fn latest(&self, name: &str) -> Result<Option<u32>, EngineError> {
        self.conn()
            .query_row(
                "SELECT latest FROM functions WHERE name = ?1",
                params![name],
                |r| r.get(0),
            )
            .optional()
            .map_err(db)
    }

    /// Marks what a dead daemon left in flight as failed; returns how many.
    fn recover(&self) -> Result<usize, EngineError> {
        self.conn()
            .execute(
                "UPDATE invocations SET status = 'error', ended_at = ?1,
                 error = 'the daemon stopped before this invocation finished'
                 WHERE status IN ('queued', 'running')",
                params![now()],
            )
            .map_err(db)
    }

    /// Adds version N+1 of `name` and points `latest` at it, in one transaction.
    fn add_version(
        &self,
        name: &str,
        config: &FunctionConfig,
        code_digest: Option<&str>,
        secrets: &BTreeMap<String, Vec<u8>>,
    ) -> Result<VersionInfo, EngineError> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(db)?;
        let created_at = now();
        tx.execute(
            "INSERT OR IGNORE INTO functions (name, latest, created_at) VALUES (?1, 0, ?2)",
            params![name, created_at],
        )
        .map_err(db)?;
        let version: u32 = tx
            .query_row(
                "SELECT COALESCE(MAX(version), 0) + 1 FROM versions WHERE function = ?1",
                params![name],
                |r| r.get(0),
            )
            .map_err(db)?;
        let config_json = serde_json::to_string(config).expect("a config serialises");
        tx.execute(
            "INSERT INTO versions (function, version, config, code_digest, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![name, version, config_json, code_digest, created_at],
        )
        .map_err(db)?;
        for (secret, value) in secrets {
            tx.execute(
                "INSERT INTO secrets (function, version, name, value) VALUES (?1, ?2, ?3, ?4)",
                params![name, version, secret, value],
            )
            .map_err(db)?;
        }
        tx.execute(
            "UPDATE functions SET latest = ?2 WHERE name = ?1",
            params![name, version],
        )
        .map_err(db)?;
        tx.commit().map_err(db)?;
        Ok(VersionInfo {
            function: name.to_owned(),
            version,
            code_digest: code_digest.map(str::to_owned),
            config: config.clone(),
            created_at,
        })
    }

    fn function_names(&self) -> Result<Vec<String>, EngineError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare("SELECT name FROM functions ORDER BY name")
            .map_err(db)?;
        let names = stmt
            .query_map([], |r| r.get(0))
            .map_err(db)?
            .collect::<Result<_, _>>()
            .map_err(db)?;
        Ok(names)
    }

    fn function(&self, name: &str) -> Result<FunctionInfo, EngineError> {
        let conn = self.conn();
        let latest: u32 = conn
            .query_row(
                "SELECT latest FROM functions WHERE name = ?1",
                params![name],
                |r| r.get(0),
            )
            .optional()
            .map_err(db)?
            .ok_or_else(|| EngineError::NoFunction(name.to_owned()))?;
        let mut stmt = conn
            .prepare("SELECT version, config, code_digest, created_at FROM versions WHERE function = ?1 ORDER BY version")
            .map_err(db)?;
        let versions = stmt
            .query_map(params![name], |r| {
                let config: String = r.get(1)?;
                Ok(VersionInfo {
                    function: name.to_owned(),
                    version: r.get(0)?,
                    config: serde_json::from_str(&config)
                        .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?,
                    code_digest: r.get(2)?,
                    created_at: r.get(3)?,
                })
            })
            .map_err(db)?
            .collect::<Result<Vec<_>, _>>()
            .map_err(db)?;
        Ok(FunctionInfo {
            name: name.to_owned(),
            latest,
            versions,
        })
    }

    fn set_latest(&self, name: &str, version: u32) -> Result<(), EngineError> {
        let conn = self.conn();
        let exists: bool = conn
            .query_row(
                "SELECT COUNT(*) FROM versions WHERE function = ?1 AND version = ?2",
                params![name, version],
                |r| r.get::<_, u32>(0),
            )
            .map_err(db)?
            > 0;
        if !exists {
            return Err(EngineError::NoVersion(name.to_owned(), version));
        }
        conn.execute(
            "UPDATE functions SET latest = ?2 WHERE name = ?1",
            params![name, version],
        )
        .map_err(db)?;
        Ok(())
    }

    /// Takes back a version just added (its warm template would not start):
    /// `latest` returns to `previous`, or the function goes with its only version.
    fn remove_version(
        &self,
        name: &str,
        version: u32,
        previous: Option<u32>,
    ) -> Result<(), EngineError> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(db)?;
        tx.execute(
            "DELETE FROM secrets WHERE function = ?1 AND version = ?2",
            params![name, version],
        )
        .map_err(db)?;
        tx.execute(
            "DELETE FROM versions WHERE function = ?1 AND version = ?2",
            params![name, version],
        )
        .map_err(db)?;
        match previous {
            Some(previous) => tx.execute(
                "UPDATE functions SET latest = ?2 WHERE name = ?1",
                params![name, previous],
            ),
            None => tx.execute("DELETE FROM functions WHERE name = ?1", params![name]),
        }
        .map_err(db)?;
        tx.commit().map_err(db)
    }

    fn delete_function(&self, name: &str) -> Result<(), EngineError> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(db)?;
        let n = tx
            .execute("DELETE FROM functions WHERE name = ?1", params![name])
            .map_err(db)?;
        if n == 0 {
            return Err(EngineError::NoFunction(name.to_owned()));
        }
        tx.execute("DELETE FROM invocations WHERE function = ?1", params![name])
            .map_err(db)?;
        tx.commit().map_err(db)
    }

    /// The code digests some version still runs.
    fn code_digests(&self) -> Result<std::collections::HashSet<String>, EngineError> {
        let conn = self.conn();
        let mut statement = conn
            .prepare("SELECT DISTINCT code_digest FROM versions WHERE code_digest IS NOT NULL")
            .map_err(db)?;
        let rows = statement
            .query_map([], |r| r.get::<_, String>(0))
            .map_err(db)?;
        rows.collect::<Result<_, _>>().map_err(db)
    }

    /// Deletes finished invocation records created before `before`.
    fn purge_invocations(&self, before: f64) -> Result<usize, EngineError> {
        self.conn()
            .prepare_cached("DELETE FROM invocations WHERE created_at < ?1 AND status NOT IN ('queued', 'running')")
            .and_then(|mut stmt| stmt.execute(params![before]))
            .map_err(db)
    }

    fn insert_invocation(&self, r: &InvocationRecord) -> Result<(), EngineError> {
        let inserted = self
            .conn()
            .prepare_cached(
                "INSERT INTO invocations (id, function, version, status, is_async, attempts, created_at, started_at)
                 SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8
                 WHERE EXISTS (SELECT 1 FROM versions WHERE function = ?2 AND version = ?3)",
            )
            .and_then(|mut stmt| {
                stmt.execute(params![r.id, r.function, r.version, r.status, r.is_async, r.attempts, r.created_at, r.started_at])
            })
            .map_err(db)?;
        // The version went (its function was removed) after the invocation
        // was accepted: it must not leave a record behind.
        if inserted == 0 {
            return Err(EngineError::NoFunction(r.function.clone()));
        }
        Ok(())
    }

    fn update_invocation(&self, r: &InvocationRecord) -> Result<(), EngineError> {
        self.conn()
            .prepare_cached(
                "UPDATE invocations SET status = ?2, attempts = ?3, started_at = ?4, ended_at = ?5, exit_code = ?6,
                 signal = ?7, wall_ms = ?8, cpu_user_ms = ?9, cpu_sys_ms = ?10, memory_peak_bytes = ?11,
                 pids_peak = ?12, output_truncated = ?13, error = ?14, stderr = ?15, response = ?16,
                 kernel = ?17, node = ?18, nodes = ?19, request_bytes = ?20, response_bytes = ?21
                 WHERE id = ?1",
            )
            .and_then(|mut stmt| {
                stmt.execute(params![
                    r.id,
                    r.status,
                    r.attempts,
                    r.started_at,
                    r.ended_at,
                    r.exit_code,
                    r.signal,
                    r.wall_ms,
                    r.cpu_user_ms,
                    r.cpu_sys_ms,
                    r.memory_peak_bytes.map(|v| v as i64),
                    r.pids_peak.map(|v| v as i64),
                    r.output_truncated,
                    r.error,
                    r.stderr.as_bytes(),
                    r.response,
                    r.kernel
                        .as_ref()
                        .and_then(|k| serde_json::to_string(k).ok()),
                    r.node,
                    (!r.nodes.is_empty()).then(|| serde_json::to_string(&r.nodes).unwrap_or_default()),
                    r.request_bytes.map(|v| v as i64),
                    r.response_bytes.map(|v| v as i64),
                ])
            })
            .map_err(db)?;
        Ok(())
    }

    fn invocation(&self, id: &str) -> Result<InvocationRecord, EngineError> {
        let conn = self.conn();
        conn.query_row(
            &format!("{SELECT_INVOCATION} WHERE id = ?1"),
            params![id],
            row_to_record,
        )
        .optional()
        .map_err(db)?
        .ok_or_else(|| EngineError::NoInvocation(id.to_owned()))
    }

    fn recent_invocations(
        &self,
        function: &str,
        filter: &super::InvocationFilter,
    ) -> Result<Vec<InvocationRecord>, EngineError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare_cached(&format!(
                "{SELECT_INVOCATION} WHERE {} LIMIT ?5",
                super::filtered_invocations("invocations", "?")
            ))
            .map_err(db)?;
        let (status, at, id) = filter.params();
        let rows = stmt
            .query_map(
                params![function, status, at, id, filter.limit],
                row_to_record,
            )
            .map_err(db)?
            .collect::<Result<Vec<_>, _>>()
            .map_err(db)?;
        Ok(rows)
    }

    /// A function's learned profile and how many invocations it came from.
    fn learned(
        &self,
        function: &str,
    ) -> Result<Option<(alcove_monitor::Profile, u64)>, EngineError> {
        let row: Option<(String, i64)> = self
            .conn()
            .query_row(
                "SELECT profile, invocations FROM learned WHERE function = ?1",
                params![function],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(db)?;
        Ok(row.and_then(|(text, n)| Some((serde_json::from_str(&text).ok()?, n as u64))))
    }

    fn set_learned(
        &self,
        function: &str,
        profile: &alcove_monitor::Profile,
        invocations: u64,
    ) -> Result<(), EngineError> {
        let text = serde_json::to_string(profile)
            .map_err(|e| EngineError::Internal(format!("a profile does not serialise: {e}")))?;
        self.conn()
            .execute(
                "INSERT INTO learned (function, profile, invocations, updated_at)
                 VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT(function) DO UPDATE SET profile = ?2, invocations = ?3, updated_at = ?4",
                params![function, text, invocations as i64, now()],
            )
            .map_err(db)?;
        Ok(())
    }

    fn forget_learned(&self, function: &str) -> Result<(), EngineError> {
        self.conn()
            .execute("DELETE FROM learned WHERE function = ?1", params![function])
            .map_err(db)?;
        Ok(())
    }

    /// The secret values of one version.
    fn secrets(
        &self,
        function: &str,
        version: u32,
    ) -> Result<BTreeMap<String, Vec<u8>>, EngineError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare("SELECT name, value FROM secrets WHERE function = ?1 AND version = ?2")
            .map_err(db)?;
        let rows = stmt
            .query_map(params![function, version], |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(db)?
            .collect::<Result<BTreeMap<_, _>, _>>()
            .map_err(db)?;
        Ok(rows)
    }
}

const SELECT_INVOCATION: &str = "SELECT id, function, version, status, is_async, attempts, created_at, started_at,
    ended_at, exit_code, signal, wall_ms, cpu_user_ms, cpu_sys_ms, memory_peak_bytes, pids_peak, output_truncated,
    error, stderr, response, kernel, node, nodes, request_bytes, response_bytes FROM invocations";

fn row_to_record(r: &rusqlite::Row<'_>) -> rusqlite::Result<InvocationRecord> {
    let stderr: Option<Vec<u8>> = r.get(18)?;
    Ok(InvocationRecord {
        id: r.get(0)?,
        function: r.get(1)?,
        version: r.get(2)?,
        status: r.get(3)?,
        is_async: r.get(4)?,
        attempts: r.get(5)?,
        created_at: r.get(6)?,
        started_at: r.get(7)?,
        ended_at: r.get(8)?,
        exit_code: r.get(9)?,
        signal: r.get(10)?,
        wall_ms: r.get(11)?,
        cpu_user_ms: r.get(12)?,
        cpu_sys_ms: r.get(13)?,
        memory_peak_bytes: r.get::<_, Option<i64>>(14)?.map(|v| v as u64),
        pids_peak: r.get::<_, Option<i64>>(15)?.map(|v| v as u64),
        output_truncated: r.get(16)?,
        error: r.get(17)?,
        stderr: String::from_utf8_lossy(&stderr.unwrap_or_default()).into_owned(),
        response: r.get(19)?,
        warm: None,
        kernel: r
            .get::<_, Option<String>>(20)?
            .and_then(|k| serde_json::from_str(&k).ok()),
        node: r.get(21)?,
        nodes: r
            .get::<_, Option<String>>(22)?
            .and_then(|n| serde_json::from_str(&n).ok())
            .unwrap_or_default(),
        request_bytes: r.get::<_, Option<i64>>(23)?.map(|v| v as u64),
        response_bytes: r.get::<_, Option<i64>>(24)?.map(|v| v as u64),
    })
}
