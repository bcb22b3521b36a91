//! The functions platform across machines, for real: Debian's PostgreSQL 15
//! as the shared store, `alcove serve` daemons each in a network namespace of
//! the test's own, Debian's HAProxy in front (common/cluster.rs). A deploy on
//! one daemon is served by all; async invocations spread over every daemon;
//! a daemon killed with -9 (or cut off the network) mid-batch loses none and
//! runs none more often than its retries allow; a per-function cap holds
//! across daemons; daemons ride out a PostgreSQL restart, wait for a
//! database that is not up yet, and a fourth joins and serves at once;
//! readiness, metrics and `fn ps` say which node is which.

mod common;
use common::cluster::{alive, unix_now, Cluster, ClusterDaemon};
use common::daemon::{code, deploy, Reply};
use common::*;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The lease the kill and cut tests give async jobs (`--queue-lease`).
const LEASE_S: u64 = 3;

fn nodes_of(c: &Cluster) -> BTreeSet<String> {
    c.daemons.iter().map(|d| d.node.clone()).collect()
}

/// Deploys `sh /fn/handler.sh` running `script` on daemon `d`.
fn deploy_script(c: &Cluster, d: &ClusterDaemon, name: &str, script: &str, extra: &[&str]) {
    let dir = c.dir.path().join("code").join(name);
    deploy(d, name, &code(&dir, "v", script), extra);
}

/// `POST /v1/functions/NAME/invoke?async=true&retries=N` through the balancer: its id.
fn invoke_async(c: &Cluster, name: &str, retries: u32) -> String {
    let path = format!("/v1/functions/{name}/invoke?async=true&retries={retries}");
    let reply = c.lb_http("POST", &path, b"");
    assert_eq!(reply.status, 202, "{path}: {}", reply.text());
    reply.json()["id"].as_str().unwrap().to_owned()
}

fn record(d: &ClusterDaemon, id: &str) -> Value {
    let reply = d.http("GET", &format!("/v1/invocations/{id}"), b"");
    assert_eq!(
        reply.status,
        200,
        "GET /v1/invocations/{id}: {}",
        reply.text()
    );
    reply.json()
}

fn status(r: &Value) -> &str {
    r["status"].as_str().unwrap_or("")
}

fn finished(r: &Value) -> bool {
    !matches!(status(r), "queued" | "running")
}

fn node(r: &Value) -> String {
    r["node"].as_str().unwrap_or("").to_owned()
}

/// The record's `nodes`: one per attempt begun, in order.
fn attempt_nodes(r: &Value) -> Vec<String> {
    r["nodes"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|n| n.as_str().unwrap_or("").to_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// The records of `ids`, read through `d`.
fn records(d: &ClusterDaemon, ids: &[String]) -> BTreeMap<String, Value> {
    ids.iter().map(|id| (id.clone(), record(d, id))).collect()
}

/// Polls the records of `ids` through `d` until every one has finished;
/// fails after `limit`, saying which have not.
fn wait_finished(d: &ClusterDaemon, ids: &[String], limit: Duration) -> BTreeMap<String, Value> {
    let start = Instant::now();
    let mut done = BTreeMap::new();
    loop {
        for id in ids {
            if !done.contains_key(id) {
                let r = record(d, id);
                if finished(&r) {
                    done.insert(id.clone(), r);
                }
            }
        }
        if done.len() == ids.len() {
            return done;
        }
        if start.elapsed() > limit {
            let pending: Vec<String> = ids
                .iter()
                .filter(|id| !done.contains_key(*id))
                .map(|id| {
                    let r = record(d, id);
                    format!(
                        "{id}: {} on {:?} nodes {:?}",
                        status(&r),
                        node(&r),
                        attempt_nodes(&r)
                    )
                })
                .collect();
            panic!(
                "{} of {} invocations unfinished after {limit:?}: {pending:#?}",
                pending.len(),
                ids.len()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Each record exited 0, with no more attempts than 1 + `retries`, one
/// entry in `nodes` per attempt, and `node` the last of them.
fn assert_ran_within_policy(records: &BTreeMap<String, Value>, retries: u64) {
    for (id, r) in records {
        assert_eq!(
            (status(r), r["exit_code"].as_i64()),
            ("exited", Some(0)),
            "{id}: {r}"
        );
        let attempts = r["attempts"].as_u64().unwrap_or(0);
        assert!(
            (1..=1 + retries).contains(&attempts),
            "{id} ran {attempts} attempts, more than 1 + {retries} retries allow: {r}"
        );
        let nodes = attempt_nodes(r);
        assert_eq!(
            nodes.len() as u64,
            attempts,
            "{id}: one node per attempt: {r}"
        );
        assert_eq!(
            Some(&node(r)),
            nodes.last(),
            "{id}: `node` is the last attempt's: {r}"
        );
    }
}

/// Sync invocations through the balancer (12), of a function deployed on
/// one daemon directly: every one answers the handler's output, and they ran
/// on all three daemons. A version deployed later, on another daemon, is
/// served at once by every daemon.
#[test]
fn a_deploy_on_one_daemon_is_served_by_all_through_the_balancer() {
    let Some(c) = Cluster::new(
        "a_deploy_on_one_daemon_is_served_by_all_through_the_balancer",
        3,
        &[],
    ) else {
        return;
    };
    let all = nodes_of(&c);
    deploy_script(&c, &c.daemons[0], "echo", "printf 'v1:'; cat\n", &[]);

    let mut ran_on = BTreeSet::new();
    for i in 0..12 {
        let body = format!("req{i}");
        let reply = c.lb_http("POST", "/v1/functions/echo/invoke", body.as_bytes());
        assert_eq!(
            (reply.status, reply.text()),
            (200, format!("v1:{body}")),
            "{reply:?}"
        );
        let id = reply
            .header("x-alcove-invocation")
            .expect("an invocation id");
        let r = record(&c.daemons[2], id);
        assert_eq!(status(&r), "exited", "{r}");
        ran_on.insert(node(&r));
    }
    assert_eq!(
        ran_on, all,
        "the balancer spreads sync invocations over every daemon (the records' nodes)"
    );
    let mut answered = BTreeSet::new();
    for _ in 0..9 {
        let reply = c.lb_http("GET", "/healthz", b"");
        assert_eq!(reply.status, 200, "{}", reply.text());
        let json = reply.json();
        assert_eq!(json["status"], "ok", "{json}");
        answered.insert(json["node"].as_str().unwrap_or("").to_owned());
    }
    assert_eq!(
        answered, all,
        "/healthz through the balancer names every node"
    );

    // v2, deployed on another daemon: every daemon serves it at once.
    deploy_script(&c, &c.daemons[1], "echo", "printf 'v2:'; cat\n", &[]);
    for d in &c.daemons {
        let reply = d.http("POST", "/v1/functions/echo/invoke", b"x");
        assert_eq!(
            (reply.status, reply.text(), reply.header("x-alcove-version")),
            (200, "v2:x".to_owned(), Some("2")),
            "{} right after the deploy on n2: {reply:?}",
            d.node
        );
    }
    for _ in 0..6 {
        let reply = c.lb_http("POST", "/v1/functions/echo/invoke", b"y");
        assert_eq!((reply.status, reply.text()), (200, "v2:y".to_owned()));
    }
    c.tear_down();
}

/// 60 async invocations (0.2 s each) through the balancer: all end
/// `exited`, once each, and every daemon ran some.
#[test]
fn async_invocations_spread_over_every_daemon() {
    let Some(c) = Cluster::new("async_invocations_spread_over_every_daemon", 3, &[]) else {
        return;
    };
    deploy_script(&c, &c.daemons[0], "nap", "sleep 0.2; echo napped\n", &[]);
    let ids: Vec<String> = (0..60).map(|_| invoke_async(&c, "nap", 0)).collect();
    let done = wait_finished(&c.daemons[0], &ids, Duration::from_secs(90));
    assert_ran_within_policy(&done, 0);
    let mut per_node: BTreeMap<String, usize> = BTreeMap::new();
    for (id, r) in &done {
        assert_eq!(r["response"], "napped\n", "{id}: {r}");
        *per_node.entry(node(r)).or_default() += 1;
    }
    assert_eq!(
        per_node.keys().cloned().collect::<BTreeSet<_>>(),
        nodes_of(&c),
        "every daemon takes queued invocations: {per_node:?}"
    );
    c.tear_down();
}

/// 30 async invocations (1 s each, retries=1), with 15 more (retries=0)
/// among them; one daemon is killed with -9 while some run on it. Every
/// retries=1 invocation ends `exited` within the lease and some slack, with
/// no more than two attempts; those the dead daemon had begun ran a second
/// time on another node. A retries=0 invocation ends `exited` unless its
/// one attempt began on the dead daemon: one it had only claimed still runs.
/// The daemon started again (same node) removes the dead one's cgroups and
/// runs nothing again.
#[test]
fn kill_9_of_a_daemon_mid_batch_loses_no_invocation() {
    let lease = LEASE_S.to_string();
    let Some(mut c) = Cluster::new(
        "kill_9_of_a_daemon_mid_batch_loses_no_invocation",
        3,
        &["--queue-lease", &lease],
    ) else {
        return;
    };
    deploy_script(&c, &c.daemons[0], "slow", "sleep 1; echo slept\n", &[]);
    let (mut ids, mut once) = (Vec::new(), Vec::new());
    for i in 0..45 {
        if i % 3 == 2 {
            once.push(invoke_async(&c, "slow", 0));
        } else {
            ids.push(invoke_async(&c, "slow", 1));
        }
    }
    let all: Vec<String> = ids.iter().chain(&once).cloned().collect();

    // Wait until n2 or n3 runs some (n1 answers the test's reads).
    let start = Instant::now();
    let (victim, running_there) = loop {
        let now = records(&c.daemons[0], &all);
        let running: Vec<(String, String)> = now
            .iter()
            .filter(|(_, r)| status(r) == "running" && node(r) != "n1")
            .map(|(id, r)| (id.clone(), node(r)))
            .collect();
        if let Some((_, victim)) = running.first() {
            let victim = victim.clone();
            let there: Vec<String> = running
                .into_iter()
                .filter(|(_, n)| *n == victim)
                .map(|(id, _)| id)
                .collect();
            break (victim, there);
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "nothing ran on n2 or n3: {now:#?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let v = c.daemons.iter().position(|d| d.node == victim).unwrap();
    let dead_pid = c.daemons[v].kill9();
    let killed_at = unix_now();
    let killed = Instant::now();

    let mut done = wait_finished(&c.daemons[0], &all, Duration::from_secs(LEASE_S + 25));
    let took = killed.elapsed();
    for id in &all {
        let r = &done[id];
        eprintln!(
            "{id} retries={} {} attempts={} nodes={:?} error={}",
            if once.contains(id) { 0 } else { 1 },
            status(r),
            r["attempts"],
            attempt_nodes(r),
            r["error"]
        );
    }
    let done_once: BTreeMap<String, Value> = once
        .iter()
        .map(|id| (id.clone(), done.remove(id).unwrap()))
        .collect();
    assert_ran_within_policy(&done, 1);
    for (id, r) in &done_once {
        let began_on_victim = attempt_nodes(r) == [victim.clone()] && r["attempts"] == 1;
        assert!(
            (status(r) == "exited" && r["attempts"] == 1 && attempt_nodes(r) == [node(r)])
                || (status(r) == "error" && began_on_victim),
            "{id} (retries=0) neither ran once nor began on {victim}, which died: {r}"
        );
    }
    let mut rerun = 0;
    for (id, r) in &done {
        let nodes = attempt_nodes(r);
        if nodes.last() == Some(&victim) {
            let ended = r["ended_at"].as_f64().unwrap_or(f64::MAX);
            assert!(
                ended <= killed_at + 0.5,
                "{id} ended on {victim} after it was killed: {r}"
            );
        } else if nodes.contains(&victim) {
            assert_eq!(nodes.len(), 2, "{id}: {r}");
            assert_eq!(nodes[0], victim, "{id}: {r}");
            rerun += 1;
        }
    }
    for id in running_there.iter().filter(|id| done.contains_key(*id)) {
        let nodes = attempt_nodes(&done[id]);
        assert!(
            nodes.len() == 2
                || done[id]["ended_at"].as_f64().unwrap_or(f64::MAX) <= killed_at + 0.5,
            "{id} ran on {victim} when it was killed, and was not run again: {}",
            done[id]
        );
    }
    // Those with retries=0 that were running there end `error` (their one
    // attempt began and died); the others run again elsewhere.
    let lost_once = done_once.values().filter(|r| status(r) == "error").count();
    assert!(
        rerun + lost_once >= 1,
        "{} invocations ran on {victim} when it was killed; none was run again or given up: {done:#?}",
        running_there.len()
    );
    eprintln!(
        "kill -9 of {victim}: {} running there, {rerun} run again elsewhere, {lost_once} with retries=0 given up; all 45 done {:.1}s after the kill",
        running_there.len(),
        took.as_secs_f64()
    );

    // The node comes back: it removes what the dead daemon left and runs nothing again.
    c.daemons[v].restart();
    c.daemons[v].wait_ready(Duration::from_secs(60));
    let prefix = format!("sb-{dead_pid}-");
    wait_until(
        "the dead daemon's cgroups are removed",
        Duration::from_secs(10),
        || {
            alcove_cgroups().iter().all(|p| {
                !p.file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with(&prefix)
            })
        },
    );
    std::thread::sleep(Duration::from_secs(1));
    let after = records(&c.daemons[0], &all);
    for (id, r) in &after {
        let before = done.get(id).unwrap_or_else(|| &done_once[id]);
        assert_eq!(
            (r["attempts"].clone(), r["nodes"].clone()),
            (before["attempts"].clone(), before["nodes"].clone()),
            "{id} changed after the node came back: {r}"
        );
    }
    c.tear_down();
}

/// The most `[start, end)` intervals that overlap at any instant.
fn most_at_once(intervals: &[(f64, f64)]) -> usize {
    let mut events: Vec<(f64, i32)> = intervals
        .iter()
        .flat_map(|&(s, e)| [(s, 1), (e, -1)])
        .collect();
    // An end at the same instant as a start frees the slot first.
    events.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    let (mut now, mut most) = (0i32, 0i32);
    for (_, delta) in events {
        now += delta;
        most = most.max(now);
    }
    most as usize
}

/// A function with `--concurrency 2`, 12 async invocations (1 s each)
/// through the balancer: at no instant do more than two run, across all
/// three daemons (from the records' started_at and ended_at), two do run at
/// once, and more than one node ran some.
#[test]
fn a_concurrency_cap_of_two_holds_across_three_daemons() {
    let Some(c) = Cluster::new(
        "a_concurrency_cap_of_two_holds_across_three_daemons",
        3,
        &[],
    ) else {
        return;
    };
    deploy_script(
        &c,
        &c.daemons[0],
        "capped",
        "sleep 1\n",
        &["--concurrency", "2"],
    );
    let ids: Vec<String> = (0..12).map(|_| invoke_async(&c, "capped", 0)).collect();
    let done = wait_finished(&c.daemons[0], &ids, Duration::from_secs(60));
    assert_ran_within_policy(&done, 0);
    let intervals: Vec<(f64, f64)> = done
        .values()
        .map(|r| {
            (
                r["started_at"].as_f64().expect("started_at"),
                r["ended_at"].as_f64().expect("ended_at"),
            )
        })
        .collect();
    let most = most_at_once(&intervals);
    let shown: Vec<String> = done
        .values()
        .map(|r| {
            format!(
                "{} {:.3}-{:.3}",
                node(r),
                r["started_at"].as_f64().unwrap_or(0.0),
                r["ended_at"].as_f64().unwrap_or(0.0)
            )
        })
        .collect();
    assert!(most <= 2, "{most} ran at once under a cap of 2: {shown:#?}");
    assert_eq!(most, 2, "the cap is 2, not 1: {shown:#?}");
    let ran_on: BTreeSet<String> = done.values().map(node).collect();
    assert!(ran_on.len() > 1, "one node ran them all: {shown:#?}");
    c.tear_down();
}

/// What one request of the load in the restart test got.
#[derive(Debug, Clone)]
#[allow(dead_code)] // the fields are read through Debug, in the failure messages
enum Outcome {
    Ok,
    /// The daemon's clean refusal: 503, code store_unavailable.
    StoreUnavailable,
    /// HAProxy's own error page (no server up, or one that failed): 502/503/504.
    Balancer(u16),
    Bad(String),
}

fn classify(reply: Result<Reply, String>) -> Outcome {
    let reply = match reply {
        Ok(r) => r,
        Err(e) => return Outcome::Bad(e),
    };
    let json: Option<Value> = serde_json::from_slice(&reply.body).ok();
    match (reply.status, json) {
        (200, _) if reply.body == b"ok\n" => Outcome::Ok,
        (503, Some(j)) if j.pointer("/error/code") == Some(&Value::from("store_unavailable")) => {
            Outcome::StoreUnavailable
        }
        (502..=504, None) => Outcome::Balancer(reply.status),
        (s, _) => Outcome::Bad(format!("{s}: {}", reply.text())),
    }
}

/// A stream of sync invocations through the balancer while PostgreSQL is
/// stopped and started again: the errors meanwhile are clean (503
/// store_unavailable, or the balancer's own), none hangs, the daemons stay
/// up, and within 20 s of the database's return every daemon serves again.
#[test]
fn daemons_ride_out_a_postgres_restart_under_load() {
    let Some(c) = Cluster::new("daemons_ride_out_a_postgres_restart_under_load", 3, &[]) else {
        return;
    };
    deploy_script(&c, &c.daemons[0], "ok", "echo ok\n", &[]);
    let pids: Vec<i32> = c.daemons.iter().map(|d| d.pid()).collect();
    let t0 = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let seen: Arc<Mutex<Vec<(Duration, Duration, Outcome)>>> = Arc::default();
    let (lb, bearer) = (c.lb().addr.clone(), format!("Bearer {}", c.token));
    let clients: Vec<_> = (0..2)
        .map(|_| {
            let (stop, seen, lb, bearer) = (stop.clone(), seen.clone(), lb.clone(), bearer.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let begun = t0.elapsed();
                    let reply = common::cluster::try_http(
                        &lb,
                        "POST",
                        "/v1/functions/ok/invoke",
                        &[("authorization", &bearer)],
                        b"",
                        Duration::from_secs(15),
                    );
                    let outcome = classify(reply);
                    seen.lock()
                        .unwrap()
                        .push((begun, t0.elapsed() - begun, outcome));
                    std::thread::sleep(Duration::from_millis(20));
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(1500));
    let stopped = t0.elapsed();
    c.pg.stop();
    wait_until(
        "every daemon says it is not ready",
        Duration::from_secs(10),
        || c.daemons.iter().all(|d| d.readyz().0 == 503),
    );
    std::thread::sleep(Duration::from_secs(2));
    for d in &c.daemons {
        assert!(
            d.alive(),
            "{} exited while the database was down: {}",
            d.node,
            d.log()
        );
    }
    c.pg.start();
    let back = Instant::now();
    let started = t0.elapsed();
    for d in &c.daemons {
        loop {
            let reply = d.try_http(
                "POST",
                "/v1/functions/ok/invoke",
                b"",
                Duration::from_secs(5),
            );
            if matches!(classify(reply), Outcome::Ok) {
                break;
            }
            assert!(
                back.elapsed() < Duration::from_secs(20),
                "{} does not serve 20 s after the database came back: {}",
                d.node,
                d.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    c.lb()
        .wait_up(3, Duration::from_secs(20).saturating_sub(back.elapsed()));
    let recovered = t0.elapsed();
    std::thread::sleep(Duration::from_millis(1500));
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.join().unwrap();
    }
    let seen = seen.lock().unwrap().clone();
    let before: Vec<_> = seen.iter().filter(|(b, d, _)| *b + *d < stopped).collect();
    assert!(before.len() >= 5, "the load ran before the stop: {seen:?}");
    assert!(
        before.iter().all(|(_, _, o)| matches!(o, Outcome::Ok)),
        "{before:?}"
    );
    let bad: Vec<_> = seen
        .iter()
        .filter(|(_, _, o)| matches!(o, Outcome::Bad(_)))
        .collect();
    assert!(
        bad.is_empty(),
        "unclean answers while the database was away: {bad:#?}"
    );
    let slow: Vec<_> = seen
        .iter()
        .filter(|(_, d, _)| *d > Duration::from_secs(10))
        .collect();
    assert!(slow.is_empty(), "requests that hung: {slow:#?}");
    let after: Vec<_> = seen.iter().filter(|(b, _, _)| *b >= recovered).collect();
    assert!(!after.is_empty(), "the load ran after the recovery");
    assert!(
        after.iter().all(|(_, _, o)| matches!(o, Outcome::Ok)),
        "{after:?}"
    );
    let count = |f: fn(&Outcome) -> bool| seen.iter().filter(|(_, _, o)| f(o)).count();
    eprintln!(
        "through the restart: {} ok, {} store_unavailable, {} balancer errors; served again {:.1}s after the database started",
        count(|o| matches!(o, Outcome::Ok)),
        count(|o| matches!(o, Outcome::StoreUnavailable)),
        count(|o| matches!(o, Outcome::Balancer(_))),
        (recovered - started).as_secs_f64()
    );
    for (d, pid) in c.daemons.iter().zip(pids) {
        assert_eq!(d.pid(), pid);
        assert!(alive(pid), "{} is gone: {}", d.node, d.log());
    }
    c.tear_down();
}

/// A daemon started while the database is down: with `--store-wait 2` it
/// gives up and exits saying so; with `--store-wait 60` it waits, and is
/// ready once the database starts 3 s later. Then a fourth daemon joins a
/// running cluster and serves, at once, a function deployed before it
/// started, and the balancer reloaded with it spreads over all four.
#[test]
fn a_daemon_waits_for_its_database_and_a_fourth_joins_at_once() {
    let Some(mut c) = Cluster::new(
        "a_daemon_waits_for_its_database_and_a_fourth_joins_at_once",
        0,
        &[],
    ) else {
        return;
    };
    c.pg.stop();
    let i = c.spawn_daemon(&["--store-wait", "2"]);
    wait_until(
        "a daemon with --store-wait 2 gives up",
        Duration::from_secs(30),
        || !c.daemons[i].alive(),
    );
    let code = c.daemons[i].daemon.child.wait().unwrap();
    assert!(!code.success(), "it exited {code} without a database");
    let log = c.daemons[i].log().to_lowercase();
    assert!(
        ["database", "postgres", "store"]
            .iter()
            .any(|w| log.contains(w)),
        "its message names what it waited for: {log}"
    );
    c.daemons.remove(i);

    let first = c.spawn_daemon(&["--store-wait", "60"]);
    std::thread::sleep(Duration::from_secs(3));
    let d = &c.daemons[first];
    assert!(d.alive(), "it waits rather than exits: {}", d.log());
    assert_ne!(d.readyz().0, 200, "not ready without a database");
    c.pg.start();
    c.daemons[first].wait_ready(Duration::from_secs(30));
    c.add_daemon(&[]);
    c.add_daemon(&[]);
    c.balance();
    deploy_script(&c, &c.daemons[0], "hello", "echo hello\n", &[]);
    let reply = c.lb_http("POST", "/v1/functions/hello/invoke", b"");
    assert_eq!((reply.status, reply.text()), (200, "hello\n".to_owned()));

    let fourth = c.add_daemon(&[]);
    let d = &c.daemons[fourth];
    let reply = d.http("POST", "/v1/functions/hello/invoke", b"");
    assert_eq!(
        (reply.status, reply.text()),
        (200, "hello\n".to_owned()),
        "the fourth daemon serves at once: {}",
        d.log()
    );
    let id = reply.header("x-alcove-invocation").unwrap();
    assert_eq!(node(&record(&c.daemons[0], id)), d.node);
    c.balance();
    let mut answered = BTreeSet::new();
    for _ in 0..12 {
        let reply = c.lb_http("GET", "/healthz", b"");
        answered.insert(reply.json()["node"].as_str().unwrap_or("").to_owned());
    }
    assert_eq!(answered, nodes_of(&c), "the balancer spreads over all four");
    for _ in 0..8 {
        let reply = c.lb_http("POST", "/v1/functions/hello/invoke", b"");
        assert_eq!((reply.status, reply.text()), (200, "hello\n".to_owned()));
    }
    c.tear_down();
}

/// /metrics: every sample carries its daemon's node; `fn ps` on either
/// daemon lists a running invocation with the node running it; /readyz is
/// 503 (saying why) while the database is down, requests that need it are
/// refused with 503 store_unavailable and /healthz still answers; all is
/// well again once it is back.
#[test]
fn readiness_metrics_and_ps_name_the_node() {
    let Some(c) = Cluster::new("readiness_metrics_and_ps_name_the_node", 2, &[]) else {
        return;
    };
    deploy_script(&c, &c.daemons[0], "ok", "echo ok\n", &[]);
    deploy_script(&c, &c.daemons[0], "napper", "sleep 60\n", &[]);
    for d in &c.daemons {
        assert_eq!(d.http("POST", "/v1/functions/ok/invoke", b"").status, 200);
        let metrics = d.http("GET", "/metrics", b"").text();
        let label = format!("node=\"{}\"", d.node);
        let samples: Vec<&str> = metrics
            .lines()
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .collect();
        assert!(!samples.is_empty(), "{metrics}");
        let unlabelled: Vec<&&str> = samples.iter().filter(|l| !l.contains(&label)).collect();
        assert!(
            unlabelled.is_empty(),
            "samples of {} without {label}: {unlabelled:#?}",
            d.node
        );
    }

    // A sync invocation runs on n1, where it was sent; both daemons list it.
    let n1 = &c.daemons[0];
    let (addr, bearer) = (n1.addr.clone(), format!("Bearer {}", c.token));
    let napping = std::thread::spawn(move || {
        common::cluster::try_http(
            &addr,
            "POST",
            "/v1/functions/napper/invoke",
            &[("authorization", &bearer)],
            b"",
            Duration::from_secs(90),
        )
    });
    let mut id = String::new();
    wait_until("n2's fn ps lists the nap", Duration::from_secs(20), || {
        let listed = c.daemons[1].cli_json(&["ps"]);
        let list = listed["invocations"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        match list
            .iter()
            .find(|r| r["function"] == "napper" && r["status"] == "running")
        {
            Some(r) => {
                assert_eq!(node(r), "n1", "fn ps on n2: {r}");
                id = r["id"].as_str().unwrap_or("").to_owned();
                true
            }
            None => false,
        }
    });
    let listed = n1.cli_json(&["ps"]);
    let mine = listed["invocations"]
        .as_array()
        .and_then(|l| l.iter().find(|r| r["id"] == id.as_str()).cloned())
        .unwrap_or_else(|| panic!("n1's fn ps lacks {id}: {listed}"));
    assert_eq!(node(&mine), "n1", "{mine}");
    let (_, table, _) = c.daemons[1].cli(&["ps"]);
    assert!(
        table.contains("n1"),
        "fn ps's table shows the node: {table}"
    );
    let cancel = n1.http("DELETE", &format!("/v1/invocations/{id}"), b"");
    assert_eq!(cancel.status, 200, "{}", cancel.text());
    let _ = napping.join().unwrap();

    c.pg.stop();
    for d in &c.daemons {
        wait_until(
            &format!("{} says it is not ready", d.node),
            Duration::from_secs(10),
            || d.readyz().0 == 503,
        );
        let (_, json) = d.readyz();
        assert_eq!(
            (json["status"].as_str(), json["node"].as_str()),
            (Some("not_ready"), Some(d.node.as_str())),
            "{json}"
        );
        assert!(
            json["reason"].as_str().is_some_and(|r| !r.is_empty()),
            "{json}"
        );
        let health = d.http("GET", "/healthz", b"");
        assert_eq!(health.status, 200, "alive while the database is down");
        assert_eq!(health.json()["node"], d.node.as_str());
        let reply = d
            .try_http("GET", "/v1/functions", b"", Duration::from_secs(15))
            .unwrap_or_else(|e| panic!("{}: GET /v1/functions hung: {e}", d.node));
        assert_eq!(
            (reply.status, reply.code()),
            (503, "store_unavailable".to_owned()),
            "{}: {}",
            d.node,
            reply.text()
        );
    }
    c.pg.start();
    for d in &c.daemons {
        d.wait_ready(Duration::from_secs(20));
        let reply = d.http("GET", "/v1/functions", b"");
        assert_eq!(reply.status, 200, "{}", reply.text());
    }
    c.tear_down();
}

/// A daemon cut off the network mid-batch (its link down, the process
/// alive): the others take its jobs when their leases expire; joined again,
/// it overwrites no record and runs nothing again beyond the retry policy.
#[test]
fn a_daemon_cut_off_the_network_mid_batch_loses_nothing() {
    let lease = LEASE_S.to_string();
    let Some(c) = Cluster::new(
        "a_daemon_cut_off_the_network_mid_batch_loses_nothing",
        3,
        &["--queue-lease", &lease],
    ) else {
        return;
    };
    deploy_script(&c, &c.daemons[0], "slow", "sleep 1.5; echo slept\n", &[]);
    let ids: Vec<String> = (0..24).map(|_| invoke_async(&c, "slow", 1)).collect();
    let victim = &c.daemons[2];
    wait_until("something runs on n3", Duration::from_secs(30), || {
        records(&c.daemons[0], &ids)
            .values()
            .any(|r| status(r) == "running" && node(r) == "n3")
    });
    victim.ns.cut();
    let cut = Instant::now();
    let done = wait_finished(&c.daemons[0], &ids, Duration::from_secs(LEASE_S + 25));
    eprintln!(
        "all done {:.1}s after n3 was cut off",
        cut.elapsed().as_secs_f64()
    );
    assert_ran_within_policy(&done, 1);
    victim.ns.restore();
    victim.wait_ready(Duration::from_secs(30));
    assert!(victim.alive());
    // What n3 held when it was cut, it may still try to write now: records must not change.
    std::thread::sleep(Duration::from_secs(LEASE_S + 1));
    let after = records(&c.daemons[0], &ids);
    assert_ran_within_policy(&after, 1);
    for (id, r) in &after {
        assert_eq!(
            (
                r["status"].clone(),
                r["attempts"].clone(),
                r["nodes"].clone()
            ),
            (
                done[id]["status"].clone(),
                done[id]["attempts"].clone(),
                done[id]["nodes"].clone()
            ),
            "{id} changed once n3 was back: {r}\nn3's log:\n{}",
            victim.log()
        );
    }
    let moved = done
        .values()
        .filter(|r| attempt_nodes(r).first().map(String::as_str) == Some("n3") && node(r) != "n3")
        .count();
    assert!(moved >= 1, "nothing n3 held was taken over: {done:#?}");
    c.tear_down();
}

#[test]
fn a_queued_invocation_is_cancelled_through_any_daemon_and_never_runs() {
    let Some(c) = Cluster::new(
        "a_queued_invocation_is_cancelled_through_any_daemon_and_never_runs",
        2,
        &[],
    ) else {
        return;
    };
    deploy_script(
        &c,
        &c.daemons[0],
        "one-at-a-time",
        "sleep 2\n",
        &["--concurrency", "1"],
    );
    let ids: Vec<String> = (0..3)
        .map(|_| invoke_async(&c, "one-at-a-time", 0))
        .collect();
    let last = ids.last().unwrap().clone();
    // It waits for the function's one slot; a daemon may hold it for the
    // moment it takes to find the slot taken, so a 409 is tried again.
    let start = Instant::now();
    let cancelled = loop {
        let reply = c.daemons[1].http("DELETE", &format!("/v1/invocations/{last}"), b"");
        if reply.status == 200 {
            break reply.json();
        }
        assert_eq!(reply.status, 409, "{}", reply.text());
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "never cancelled: {}",
            reply.text()
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status(&cancelled), "cancelled", "{cancelled}");
    let done = wait_finished(&c.daemons[0], &ids, Duration::from_secs(30));
    let r = &done[&last];
    assert_eq!(
        (status(r), r["attempts"].as_u64(), attempt_nodes(r).len()),
        ("cancelled", Some(0), 0),
        "the cancelled invocation ran: {r}"
    );
    for id in &ids[..2] {
        assert_eq!(status(&done[id]), "exited", "{}", done[id]);
    }
    c.tear_down();
}
