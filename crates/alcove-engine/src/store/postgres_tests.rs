//! The shared store against a real PostgreSQL: each test starts its own
//! server from Debian's packages (initdb in a temporary directory, a Unix
//! socket there and no TCP), and stops it and removes the directory when it
//! ends. Without root or the binaries, the tests say so and pass.

use super::*;
use std::path::Path;
use std::process::Command;
use std::sync::Barrier;
use std::thread;
use std::time::Instant;

const BIN: &str = "/usr/lib/postgresql/15/bin";
const PORT: u16 = 5432;
/// A lease or delay that lapses within the test, and a wait past it (the
/// steps between taking and checking one must fit within SHORT).
const SHORT: Duration = Duration::from_millis(1500);
const PAST_SHORT: Duration = Duration::from_millis(1800);
const KEY: &str = "8f1d5a6a0c6f4f7e9b3c2d1e0f9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d3e2f1a";
const OTHER_KEY: &str = "1f1d5a6a0c6f4f7e9b3c2d1e0f9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d3e2f1a";

/// A PostgreSQL server of the test's own.
struct Pg {
    dir: tempfile::TempDir,
}

fn postgres_user_ids() -> Option<(u32, u32)> {
    let id = |flag: &str| -> Option<u32> {
        let out = Command::new("id").args([flag, "postgres"]).output().ok()?;
        String::from_utf8_lossy(&out.stdout).trim().parse().ok()
    };
    Some((id("-u")?, id("-g")?))
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).trim() == "0")
}

fn as_postgres(program: &str, args: &[&str]) -> std::process::Output {
    Command::new("runuser")
        .args(["-u", "postgres", "--", &format!("{BIN}/{program}")])
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {program}: {e}"))
}

impl Pg {
    /// A new server, or None (with a line saying why) where none can run.
    fn start() -> Option<Pg> {
        if !is_root() {
            eprintln!(
                "skipped: PostgreSQL tests run initdb as the postgres user, which needs root"
            );
            return None;
        }
        // scripts/test.sh installs PostgreSQL: in CI its absence is a failure.
        let unprovided = |why: &str| {
            assert!(
                std::env::var_os("ALCOVE_CI").is_none(),
                "{why}: scripts/test.sh installs it"
            );
            eprintln!("skipped: {why}");
        };
        if !Path::new(BIN).join("initdb").exists() {
            unprovided(&format!(
                "no PostgreSQL 15 binaries in {BIN} (apt-get install postgresql-15)"
            ));
            return None;
        }
        let Some((uid, gid)) = postgres_user_ids() else {
            unprovided("there is no postgres user");
            return None;
        };
        let dir = tempfile::Builder::new()
            .prefix("alcove-pg")
            .tempdir()
            .expect("a temp dir");
        std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).expect("chown the temp dir");
        let pg = Pg { dir };
        let data = pg.data();
        let out = as_postgres(
            "initdb",
            &[
                "-D",
                &data,
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--no-sync",
            ],
        );
        assert!(
            out.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        pg.start_server();
        Some(pg)
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn data(&self) -> String {
        self.path().join("data").display().to_string()
    }

    fn url(&self) -> String {
        format!(
            "host={} port={PORT} user=postgres dbname=postgres",
            self.path().display()
        )
    }

    fn start_server(&self) {
        self.start_server_with("-c listen_addresses=''");
    }

    /// Starts it with `extra` server options after the test's own.
    fn start_server_with(&self, extra: &str) {
        let options = format!(
            "-k {} -p {PORT} -c fsync=off -c shared_buffers=16MB {extra}",
            self.path().display()
        );
        let log = self.path().join("log").display().to_string();
        let out = as_postgres(
            "pg_ctl",
            &[
                "-D",
                &self.data(),
                "-l",
                &log,
                "-o",
                &options,
                "-w",
                "-t",
                "30",
                "start",
            ],
        );
        assert!(
            out.status.success(),
            "pg_ctl start: {}{}",
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }

    fn stop_server(&self) {
        let out = as_postgres(
            "pg_ctl",
            &["-D", &self.data(), "-m", "immediate", "-w", "stop"],
        );
        assert!(
            out.status.success(),
            "pg_ctl stop: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn open(&self, node: &str) -> Result<PgStore, EngineError> {
        self.open_with(node, KEY, Duration::from_secs(5))
    }

    fn open_with(&self, node: &str, key: &str, wait: Duration) -> Result<PgStore, EngineError> {
        PgStore::open(
            &self.url(),
            node,
            SecretBox::from_hex(key).expect("a key"),
            wait,
            None,
        )
    }
}

impl Drop for Pg {
    fn drop(&mut self) {
        // Stopped already (or never started) is fine; the directory goes with `dir`.
        let _ = Command::new("runuser")
            .args(["-u", "postgres", "--", &format!("{BIN}/pg_ctl")])
            .args(["-D", &self.data(), "-m", "immediate", "-w", "stop"])
            .output();
    }
}

macro_rules! postgres_or_skip {
    () => {
        match Pg::start() {
            Some(pg) => pg,
            None => return,
        }
    };
}

/// Runs `sql` on the store's pool (tests only).
fn rows(store: &PgStore, sql: &'static str) -> Vec<Row> {
    store
        .run(move |ctx| async move {
            let client = ctx.client().await?;
            query(&client, sql, &[]).await
        })
        .expect(sql)
}

fn config() -> FunctionConfig {
    serde_json::from_value(serde_json::json!({ "handler": ["true"] })).expect("a config")
}

fn record(id: &str, function: &str, version: u32, status: &str) -> InvocationRecord {
    InvocationRecord {
        id: id.to_owned(),
        function: function.to_owned(),
        version,
        status: status.to_owned(),
        is_async: true,
        created_at: now(),
        ..Default::default()
    }
}

fn unavailable(result: Result<impl std::fmt::Debug, EngineError>) -> String {
    match result {
        Err(EngineError::StoreUnavailable(why)) => why,
        other => panic!("expected StoreUnavailable, got {other:?}"),
    }
}

#[test]
fn migrations_are_safe_to_run_twice_and_at_once() {
    let pg = postgres_or_skip!();
    let start = Barrier::new(4);
    thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|i| {
                let (pg, start) = (&pg, &start);
                s.spawn(move || {
                    start.wait();
                    pg.open(&format!("n{i}")).map(|_| ())
                })
            })
            .collect();
        for h in handles {
            h.join().expect("no panic").expect("opens");
        }
    });
    let store = pg.open("again").expect("opens again");
    let versions = rows(&store, "SELECT version FROM alcove_schema");
    assert_eq!(versions.len(), 1);
    assert_eq!(
        versions[0].get::<_, i32>(0),
        i32::try_from(schema::STEPS.len()).unwrap()
    );
    let keys = rows(
        &store,
        "SELECT count(*) FROM alcove_meta WHERE key = 'secrets_key_check'",
    );
    assert_eq!(keys[0].get::<_, i64>(0), 1);
    assert!(store.function_names().unwrap().is_empty());
}

#[test]
fn functions_versions_and_records() {
    let pg = postgres_or_skip!();
    let store = pg.open("n1").unwrap();
    assert!(store.shared().is_some());
    assert_eq!(store.latest("f").unwrap(), None);
    assert!(matches!(
        store.function("f"),
        Err(EngineError::NoFunction(_))
    ));

    let v1 = store
        .add_version("f", &config(), Some("sha256:aa"), &BTreeMap::new())
        .unwrap();
    let v2 = store
        .add_version("f", &config(), None, &BTreeMap::new())
        .unwrap();
    assert_eq!((v1.version, v2.version), (1, 2));
    let info = store.function("f").unwrap();
    assert_eq!(info.latest, 2);
    assert_eq!(info.versions, vec![v1.clone(), v2]);
    assert_eq!(store.function_names().unwrap(), vec!["f".to_owned()]);
    assert_eq!(
        store.code_digests().unwrap(),
        HashSet::from(["sha256:aa".to_owned()])
    );
    store.set_latest("f", 1).unwrap();
    assert_eq!(store.latest("f").unwrap(), Some(1));
    assert!(matches!(
        store.set_latest("f", 9),
        Err(EngineError::NoVersion(_, 9))
    ));
    store.remove_version("f", 2, Some(1)).unwrap();
    assert_eq!(store.function("f").unwrap().versions, vec![v1]);

    // Records: only while the version exists; every field survives.
    assert!(matches!(
        store.insert_invocation(&record("gone", "f", 7, "running")),
        Err(EngineError::NoFunction(_))
    ));
    let mut r = record("i1", "f", 1, "running");
    r.is_async = false;
    store.insert_invocation(&r).unwrap();
    assert_eq!(store.invocation("i1").unwrap().node.as_deref(), Some("n1"));
    r.status = "exited".into();
    r.attempts = 2;
    r.started_at = Some(r.created_at + 0.5);
    r.ended_at = Some(r.created_at + 1.0);
    r.exit_code = Some(0);
    r.signal = Some(9);
    r.wall_ms = Some(12.5);
    r.cpu_user_ms = Some(1.25);
    r.cpu_sys_ms = Some(0.5);
    r.memory_peak_bytes = Some(u64::MAX);
    r.pids_peak = Some(3);
    r.output_truncated = true;
    r.error = Some("why".into());
    r.stderr = "log line\n".into();
    r.response = Some(vec![0, 1, 2, 255]);
    r.kernel = Some(crate::KernelRecord {
        bytes_read: 42,
        ..Default::default()
    });
    r.node = Some("n1".into());
    r.nodes = vec!["n2".into(), "n1".into()];
    store.update_invocation(&r).unwrap();
    let mut back = store.invocation("i1").unwrap();
    assert_eq!(back.memory_peak_bytes, Some(i64::MAX as u64));
    back.memory_peak_bytes = r.memory_peak_bytes;
    assert_eq!(back, r);
    assert!(matches!(
        store.invocation("nope"),
        Err(EngineError::NoInvocation(_))
    ));
    store
        .insert_invocation(&record("i2", "f", 1, "queued"))
        .unwrap();
    let recent = store.recent_invocations("f", &latest(10)).unwrap();
    assert_eq!(
        recent.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
        ["i2", "i1"]
    );
    assert_eq!(store.recent_invocations("f", &latest(1)).unwrap().len(), 1);
    assert_eq!(
        store.purge_invocations(now() + 10.0).unwrap(),
        1,
        "only the finished one"
    );

    // Learned profiles.
    assert!(store.learned("f").unwrap().is_none());
    let profile = alcove_monitor::Profile::default();
    store.set_learned("f", &profile, 7).unwrap();
    store.set_learned("f", &profile, 8).unwrap();
    assert_eq!(store.learned("f").unwrap(), Some((profile, 8)));
    store.forget_learned("f").unwrap();
    assert!(store.learned("f").unwrap().is_none());

    // Code blobs.
    assert_eq!(store.code("sha256:aa").unwrap(), None);
    store.put_code("sha256:aa", b"tar bytes").unwrap();
    store.put_code("sha256:aa", b"tar bytes").unwrap();
    assert_eq!(
        store.code("sha256:aa").unwrap().as_deref(),
        Some(&b"tar bytes"[..])
    );

    // Recovery marks this node's unfinished records, not other nodes' nor queued jobs.
    let mut running = record("r1", "f", 1, "running");
    running.started_at = Some(now());
    store.insert_invocation(&running).unwrap();
    let mut elsewhere = record("r2", "f", 1, "running");
    elsewhere.node = Some("n9".into());
    elsewhere.started_at = Some(now() - 5.0);
    store.insert_invocation(&elsewhere).unwrap();
    store
        .enqueue(&record("q1", "f", 1, "queued"), b"body", 0)
        .unwrap();
    let listed = store.running(None, 10).unwrap();
    assert_eq!(
        listed
            .iter()
            .map(|r| (r.id.as_str(), r.node.as_str()))
            .collect::<Vec<_>>(),
        [("r2", "n9"), ("r1", "n1")]
    );
    assert_eq!(store.running(Some("g"), 10).unwrap().len(), 0);
    assert_eq!(store.running(Some("f"), 1).unwrap().len(), 1);
    // r1, and i2 (queued through insert_invocation, so not in the queue).
    assert_eq!(store.recover().unwrap(), 2);
    assert_eq!(store.invocation("i2").unwrap().status, "error");
    let r1 = store.invocation("r1").unwrap();
    assert_eq!(r1.status, "error");
    assert!(r1.error.unwrap().contains("node n1 stopped"));
    assert_eq!(store.invocation("r2").unwrap().status, "running");
    assert_eq!(store.invocation("q1").unwrap().status, "queued");

    // Deleting the function takes everything with it.
    assert!(store
        .take_slot("f", 1, "r2", Duration::from_secs(60))
        .unwrap());
    store.delete_function("f").unwrap();
    assert!(matches!(
        store.delete_function("f"),
        Err(EngineError::NoFunction(_))
    ));
    assert_eq!(store.queue_depth().unwrap(), 0);
    assert!(rows(&store, "SELECT 1 FROM alcove_slots").is_empty());
    assert!(rows(&store, "SELECT 1 FROM alcove_invocations").is_empty());
    assert!(rows(&store, "SELECT 1 FROM alcove_versions").is_empty());
}

#[test]
fn concurrent_deploys_of_one_name_number_versions_apart() {
    let pg = postgres_or_skip!();
    let stores = [pg.open("a").unwrap(), pg.open("b").unwrap()];
    let start = Barrier::new(2);
    let mut versions: Vec<u32> = thread::scope(|s| {
        let handles: Vec<_> = stores
            .iter()
            .map(|store| {
                let start = &start;
                s.spawn(move || {
                    start.wait();
                    (0..8)
                        .map(|_| {
                            store
                                .add_version("f", &config(), None, &BTreeMap::new())
                                .unwrap()
                                .version
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    versions.sort_unstable();
    assert_eq!(versions, (1..=16).collect::<Vec<_>>());
    assert_eq!(stores[0].function("f").unwrap().versions.len(), 16);
}

#[test]
fn secrets_are_sealed_and_need_the_same_key() {
    let pg = postgres_or_skip!();
    let store = pg.open("n1").unwrap();
    let secrets = BTreeMap::from([
        ("TOKEN".to_owned(), b"hunter2-plaintext".to_vec()),
        ("EMPTY".to_owned(), Vec::new()),
    ]);
    let v = store.add_version("f", &config(), None, &secrets).unwrap();
    assert_eq!(store.secrets("f", v.version).unwrap(), secrets);
    assert!(store.secrets("f", 99).unwrap().is_empty());
    for row in rows(&store, "SELECT value FROM alcove_secrets") {
        let value: Vec<u8> = row.get(0);
        assert!(
            !value.windows(7).any(|w| w == b"hunter2"),
            "a secret is stored in the clear"
        );
    }
    // Another daemon with the same key reads them.
    let other = pg.open("n2").unwrap();
    assert_eq!(other.secrets("f", 1).unwrap(), secrets);
    // A daemon with another key is refused at start.
    match pg.open_with("n3", OTHER_KEY, Duration::from_secs(5)) {
        Err(EngineError::Invalid(why)) => {
            assert!(why.contains("give every daemon the same key"), "{why}")
        }
        other => panic!("expected Invalid, got {:?}", other.map(|_| ())),
    }
}

#[test]
fn queue_claims_leases_retries_and_finishes() {
    let pg = postgres_or_skip!();
    let a = pg.open("a").unwrap();
    let b = pg.open("b").unwrap();
    a.add_version("f", &config(), None, &BTreeMap::new())
        .unwrap();
    assert!(matches!(
        a.enqueue(&record("x", "f", 9, "queued"), b"", 0),
        Err(EngineError::NoFunction(_))
    ));
    assert!(matches!(
        a.invocation("x"),
        Err(EngineError::NoInvocation(_))
    ));
    for i in 0..40 {
        a.enqueue(
            &record(&format!("j{i:02}"), "f", 1, "queued"),
            format!("body {i}").as_bytes(),
            2,
        )
        .unwrap();
    }
    assert_eq!(a.queue_depth().unwrap(), 40);
    assert!(a.claim(0, Duration::from_secs(60)).unwrap().is_empty());

    // Two daemons claiming at once never get the same job.
    let start = Barrier::new(2);
    let claimed: Vec<Vec<ClaimedJob>> = thread::scope(|s| {
        let handles: Vec<_> = [&a, &b]
            .into_iter()
            .map(|store| {
                let start = &start;
                s.spawn(move || {
                    start.wait();
                    let mut mine = Vec::new();
                    loop {
                        let jobs = store.claim(3, Duration::from_secs(60)).unwrap();
                        if jobs.is_empty() {
                            return mine;
                        }
                        mine.extend(jobs);
                    }
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut ids: Vec<&str> = claimed.iter().flatten().map(|j| j.id.as_str()).collect();
    ids.sort_unstable();
    let want: Vec<String> = (0..40).map(|i| format!("j{i:02}")).collect();
    assert_eq!(ids, want.iter().map(String::as_str).collect::<Vec<_>>());
    let j0 = claimed.iter().flatten().find(|j| j.id == "j00").unwrap();
    assert_eq!(
        (j0.function.as_str(), j0.version, j0.retries, j0.attempt),
        ("f", 1, 2, 1)
    );
    assert_eq!(j0.body, b"body 0");
    // Only the holder takes a job out.
    if let Some(job) = claimed[1].first() {
        a.finish_job(&job.id).unwrap();
        assert_eq!(a.queue_depth().unwrap(), 40, "a finished b's job");
    }
    for (store, jobs) in [&a, &b].into_iter().zip(&claimed) {
        for job in jobs {
            store.finish_job(&job.id).unwrap();
        }
    }
    assert_eq!(a.queue_depth().unwrap(), 0);

    // Oldest first; an expired lease is taken again, with attempt 2.
    a.enqueue(&record("k1", "f", 1, "queued"), b"1", 1).unwrap();
    a.enqueue(&record("k2", "f", 1, "queued"), b"2", 1).unwrap();
    let first = a.claim(1, SHORT).unwrap();
    assert_eq!(
        first
            .iter()
            .map(|j| (j.id.as_str(), j.attempt))
            .collect::<Vec<_>>(),
        [("k1", 1)]
    );
    let second = b.claim(5, Duration::from_secs(60)).unwrap();
    assert_eq!(
        second.iter().map(|j| j.id.as_str()).collect::<Vec<_>>(),
        ["k2"]
    );
    assert!(
        b.claim(5, Duration::from_secs(60)).unwrap().is_empty(),
        "k1 is leased"
    );
    thread::sleep(PAST_SHORT);
    let again = b.claim(5, Duration::from_secs(60)).unwrap();
    assert_eq!(
        again
            .iter()
            .map(|j| (j.id.as_str(), j.attempt))
            .collect::<Vec<_>>(),
        [("k1", 2)]
    );

    // Renewing keeps a short lease alive.
    a.enqueue(&record("k3", "f", 1, "queued"), b"3", 0).unwrap();
    assert_eq!(a.claim(1, SHORT).unwrap().len(), 1);
    // A renewal extends only what it names, and says what it still held.
    let renewed = a
        .renew(Duration::from_secs(60), &["k3".into(), "k2".into()], &[])
        .unwrap();
    assert_eq!(renewed.jobs, ["k3"], "k2 is b's");
    thread::sleep(PAST_SHORT);
    assert!(
        b.claim(5, Duration::from_secs(60)).unwrap().is_empty(),
        "a renewed k3"
    );

    // A retry by a daemon that does not hold the job changes nothing; by
    // the holder, the job is due again after the delay.
    a.retry_job("k1", Duration::ZERO).unwrap();
    assert!(a.claim(5, Duration::from_secs(60)).unwrap().is_empty());
    b.retry_job("k1", SHORT).unwrap();
    assert!(
        a.claim(5, Duration::from_secs(60)).unwrap().is_empty(),
        "not due yet"
    );
    thread::sleep(PAST_SHORT);
    let third = a.claim(5, Duration::from_secs(60)).unwrap();
    assert_eq!(
        third
            .iter()
            .map(|j| (j.id.as_str(), j.attempt))
            .collect::<Vec<_>>(),
        [("k1", 3)]
    );
    // k1 and k3 are a's now, k2 is b's.
    for id in ["k1", "k3"] {
        a.finish_job(id).unwrap();
    }
    b.finish_job("k2").unwrap();
    assert_eq!(a.queue_depth().unwrap(), 0);
    assert_eq!(
        a.invocation("k1").unwrap().status,
        "queued",
        "the record stays"
    );
}

#[test]
fn slots_hold_a_cap_across_nodes() {
    let pg = postgres_or_skip!();
    let nodes = [
        pg.open("n1").unwrap(),
        pg.open("n2").unwrap(),
        pg.open("n3").unwrap(),
    ];
    let long = Duration::from_secs(60);

    // Three nodes at once, cap 2: exactly two win, every round.
    for round in 0..5 {
        let start = Barrier::new(3);
        let won: Vec<bool> = thread::scope(|s| {
            let handles: Vec<_> = nodes
                .iter()
                .enumerate()
                .map(|(i, store)| {
                    let start = &start;
                    s.spawn(move || {
                        start.wait();
                        store
                            .take_slot("f", 2, &format!("r{round}-{i}"), long)
                            .unwrap()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert_eq!(
            won.iter().filter(|w| **w).count(),
            2,
            "round {round}: {won:?}"
        );
        for (i, store) in nodes.iter().enumerate() {
            store.release_slot(&format!("r{round}-{i}")).unwrap();
        }
    }

    assert!(nodes[0].take_slot("f", 2, "a", long).unwrap());
    assert!(nodes[1].take_slot("f", 2, "b", SHORT).unwrap());
    assert!(!nodes[2].take_slot("f", 2, "c", long).unwrap());
    assert!(
        nodes[0].take_slot("f", 2, "a", long).unwrap(),
        "a holder takes its own slot again"
    );
    assert!(nodes[2].take_slot("g", 2, "other function", long).unwrap());
    assert!(!nodes[2].take_slot("f", 0, "zero", long).unwrap());
    // b's lease expires: its slot frees.
    thread::sleep(PAST_SHORT);
    assert!(nodes[2].take_slot("f", 2, "c", long).unwrap());
    assert!(!nodes[1].take_slot("f", 2, "d", long).unwrap());
    // Renewing keeps a slot; releasing frees it.
    assert!(nodes[1].take_slot("h", 1, "e", SHORT).unwrap());
    let renewed = nodes[1]
        .renew(long, &[], &["e".into(), "a".into()])
        .unwrap();
    assert_eq!(renewed.slots, ["e"], "a is nodes[0]'s");
    thread::sleep(PAST_SHORT);
    assert!(!nodes[0].take_slot("h", 1, "x", long).unwrap());
    nodes[0].release_slot("a").unwrap();
    assert!(nodes[1].take_slot("f", 2, "d", long).unwrap());
}

#[test]
fn the_store_waits_for_the_database_and_survives_it_going_away() {
    let pg = postgres_or_skip!();
    let store = pg.open("n1").unwrap();
    store
        .add_version("f", &config(), None, &BTreeMap::new())
        .unwrap();
    store.ping().unwrap();

    pg.stop_server();
    let started = Instant::now();
    let why = unavailable(store.ping());
    eprintln!("database stopped: {why}");
    assert!(why.contains(&pg.path().display().to_string()), "{why}");
    unavailable(store.function_names());
    unavailable(store.claim(1, Duration::from_secs(1)));
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "fails fast: {:?}",
        started.elapsed()
    );
    let err = store.latest("f").unwrap_err();
    assert_eq!(err.code(), "store_unavailable");

    // Opening gives up after `wait`, saying what failed.
    let started = Instant::now();
    let why = unavailable(pg.open_with("n2", KEY, Duration::from_secs(2)).map(|_| ()));
    eprintln!("open gave up: {why}");
    assert!(why.starts_with("connecting to "), "{why}");
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );

    // Back again: the same store works, and a daemon started before the
    // database waits for it.
    thread::scope(|s| {
        let waiting = s.spawn(|| pg.open_with("n3", KEY, Duration::from_secs(30)));
        thread::sleep(Duration::from_millis(1500));
        pg.start_server();
        let late = waiting
            .join()
            .unwrap()
            .expect("opens once the database is up");
        assert_eq!(late.latest("f").unwrap(), Some(1));
    });
    store.ping().unwrap();
    assert_eq!(store.function_names().unwrap(), ["f"]);
    assert_eq!(
        store
            .add_version("f", &config(), None, &BTreeMap::new())
            .unwrap()
            .version,
        2
    );
}

#[test]
fn calls_work_from_async_tasks_and_blocking_threads() {
    let pg = postgres_or_skip!();
    let url = pg.url();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        // As Engine::open does: on an async thread, and dropped there too.
        let store = PgStore::open(
            &url,
            "n1",
            SecretBox::from_hex(KEY).unwrap(),
            Duration::from_secs(5),
            None,
        )
        .unwrap();
        store.ping().unwrap();
        drop(store);
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let store = Arc::new(pg.open("n2").unwrap());
        let tasks: Vec<_> = (0..8)
            .map(|i| {
                let store = Arc::clone(&store);
                tokio::task::spawn_blocking(move || store.put_code(&format!("d{i}"), b"x"))
            })
            .collect();
        for task in tasks {
            task.await.unwrap().unwrap();
        }
        assert_eq!(store.code("d7").unwrap().as_deref(), Some(&b"x"[..]));
    });
}

#[test]
fn bad_urls_are_refused_without_the_password() {
    for url in [
        "postgres://user:s3cret-pw@host:notaport/db",
        "host=/tmp sslmode=s3cret-pw",
        "postgres://user:s3cret-pw@/db",
    ] {
        match PgStore::open(
            url,
            "n",
            SecretBox::from_hex(KEY).unwrap(),
            Duration::ZERO,
            None,
        ) {
            Err(EngineError::Invalid(why)) => assert!(!why.contains("s3cret"), "{why}"),
            other => panic!("{url}: expected Invalid, got {:?}", other.map(|_| ())),
        }
    }
}

#[test]
fn a_waiting_job_is_cancelled_from_any_daemon_a_held_one_is_not() {
    let pg = postgres_or_skip!();
    let a = pg.open("a").unwrap();
    let b = pg.open("b").unwrap();
    a.add_version("f", &config(), None, &BTreeMap::new())
        .unwrap();
    a.enqueue(&record("w", "f", 1, "queued"), b"", 0).unwrap();
    a.enqueue(&record("h", "f", 1, "queued"), b"", 0).unwrap();
    // b holds "w" (oldest first); "h" waits.
    let held = b.claim(1, Duration::from_secs(60)).unwrap();
    assert_eq!(
        held.iter().map(|j| j.id.as_str()).collect::<Vec<_>>(),
        ["w"]
    );
    assert!(!a.cancel_queued("w", "by a client").unwrap(), "b holds w");
    assert_eq!(a.invocation("w").unwrap().status, "queued");
    assert!(a.cancel_queued("h", "by a client").unwrap());
    let h = a.invocation("h").unwrap();
    assert_eq!(
        (h.status.as_str(), h.error.as_deref()),
        ("cancelled", Some("by a client"))
    );
    assert!(h.ended_at.is_some());
    assert_eq!(a.queue_depth().unwrap(), 1);
    assert!(!a.cancel_queued("h", "again").unwrap(), "gone already");
}

/// Runs a command in `dir`, which must succeed.
fn run_in(dir: &Path, program: &str, args: &[&str]) {
    let out = Command::new(program)
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn tls_is_used_and_the_servers_certificate_is_verified() {
    let pg = postgres_or_skip!();
    // A CA of the test's own and a server certificate for 127.0.0.1.
    let certs = pg.path().join("certs");
    std::fs::create_dir(&certs).unwrap();
    std::fs::write(certs.join("san.ext"), "subjectAltName=IP:127.0.0.1\n").unwrap();
    let openssl = |args: &[&str]| run_in(&certs, "openssl", args);
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "1",
        "-subj",
        "/CN=alcove test CA",
    ]);
    openssl(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=127.0.0.1",
    ]);
    openssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "1",
        "-extfile",
        "san.ext",
    ]);
    let (uid, gid) = postgres_user_ids().unwrap();
    for file in ["server.key", "server.pem"] {
        std::os::unix::fs::chown(certs.join(file), Some(uid), Some(gid)).unwrap();
    }
    std::fs::set_permissions(
        certs.join("server.key"),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    // The same server again, on loopback TCP with TLS.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    pg.stop_server();
    pg.start_server_with(&format!(
        "-c listen_addresses=127.0.0.1 -c ssl=on -c ssl_cert_file={0}/server.pem -c ssl_key_file={0}/server.key -c port={port}",
        certs.display()
    ));
    let url = format!("host=127.0.0.1 port={port} user=postgres dbname=postgres sslmode=require");
    let ca = certs.join("ca.pem");
    let open = |ca: Option<&Path>| {
        PgStore::open(
            &url,
            "n1",
            SecretBox::from_hex(KEY).unwrap(),
            Duration::ZERO,
            ca,
        )
    };
    // Trusting the test's CA: the session is encrypted.
    let store = open(Some(&ca)).expect("TLS with the test's CA");
    let ssl = rows(
        &store,
        "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
    );
    assert_eq!(ssl.len(), 1);
    assert!(
        col::<bool>(&ssl[0], 0).unwrap(),
        "the session is not encrypted"
    );
    drop(store);
    // Without it, the server's certificate is not trusted: no connection.
    match open(None) {
        Err(EngineError::StoreUnavailable(why)) => assert!(
            why.contains("certificate") || why.contains("UnknownIssuer"),
            "{why}"
        ),
        other => panic!("an untrusted server was accepted: {:?}", other.map(|_| ())),
    }
    // A CA file that holds no certificate is refused before connecting.
    std::fs::write(certs.join("empty.pem"), "").unwrap();
    assert!(matches!(
        open(Some(&certs.join("empty.pem"))),
        Err(EngineError::Invalid(_))
    ));
}

/// The newest `limit` invocations, unfiltered.
fn latest(limit: u32) -> crate::InvocationFilter {
    crate::InvocationFilter {
        limit,
        status: None,
        before: None,
    }
}

#[test]
fn listings_filter_by_outcome_and_page() {
    let pg = postgres_or_skip!();
    let store = pg.open("n1").unwrap();
    crate::store::filter_tests::check_filters(&store);
}
