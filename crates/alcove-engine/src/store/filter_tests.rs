//! Listing a function's invocations by outcome and page, the same on every
//! store: [`check_filters`] runs on SQLite here and on PostgreSQL in
//! postgres_tests.rs.

use super::{Cursor, InvocationFilter, StatusFilter, StoreBackend};
use crate::model::{FunctionConfig, InvocationRecord};

fn filter(limit: u32, status: Option<&str>, before: Option<Cursor>) -> InvocationFilter {
    InvocationFilter {
        limit,
        status: status.map(|s| StatusFilter::parse(s).expect("a known status")),
        before,
    }
}

fn after(id: &str) -> Option<Cursor> {
    Some(Cursor::After(id.to_owned()))
}

fn ids(store: &dyn StoreBackend, f: &InvocationFilter) -> Vec<String> {
    store
        .recent_invocations("f", f)
        .expect("a listing")
        .into_iter()
        .map(|r| r.id)
        .collect()
}

/// Six invocations of `f` one second apart (i0 oldest), two more created in
/// the same instant as i1 (t1a, t1b), and one of `g`.
pub(super) fn check_filters(store: &dyn StoreBackend) {
    let config: FunctionConfig =
        serde_json::from_value(serde_json::json!({ "handler": ["true"] })).expect("a config");
    for name in ["f", "g"] {
        store
            .add_version(name, &config, None, &Default::default())
            .expect("a version");
    }
    let outcomes = [
        ("exited", Some(0)),
        ("exited", Some(3)),
        ("timeout", None),
        ("running", None),
        ("exited", Some(0)),
        ("oom", None),
    ];
    for (i, (status, code)) in outcomes.iter().enumerate() {
        let record = InvocationRecord {
            id: format!("i{i}"),
            function: "f".into(),
            version: 1,
            status: (*status).into(),
            exit_code: *code,
            created_at: 1_000.0 + i as f64,
            ..Default::default()
        };
        // As the engine does: a record made when accepted, its outcome later.
        store.insert_invocation(&record).expect("inserted");
        store.update_invocation(&record).expect("updated");
    }
    for id in ["t1a", "t1b"] {
        let tied = InvocationRecord {
            id: id.into(),
            function: "f".into(),
            version: 1,
            status: "exited".into(),
            exit_code: Some(0),
            created_at: 1_001.0,
            ..Default::default()
        };
        store.insert_invocation(&tied).expect("inserted");
        store.update_invocation(&tied).expect("updated");
    }
    let other = InvocationRecord {
        id: "g0".into(),
        function: "g".into(),
        version: 1,
        status: "exited".into(),
        exit_code: Some(0),
        created_at: 2_000.0,
        ..Default::default()
    };
    store.insert_invocation(&other).expect("inserted");
    store.update_invocation(&other).expect("updated");

    // Newest first; rows of one instant by id, descending.
    let all = ["i5", "i4", "i3", "i2", "t1b", "t1a", "i1", "i0"];
    assert_eq!(ids(store, &filter(10, None, None)), all);
    assert_eq!(
        ids(store, &filter(10, Some("ok"), None)),
        ["i4", "t1b", "t1a", "i0"]
    );
    // Failed: ended any way but exit 0; one still running is neither.
    assert_eq!(
        ids(store, &filter(10, Some("failed"), None)),
        ["i5", "i2", "i1"]
    );
    assert_eq!(ids(store, &filter(10, Some("timeout"), None)), ["i2"]);
    assert_eq!(ids(store, &filter(10, Some("running"), None)), ["i3"]);
    assert!(ids(store, &filter(10, Some("cancelled"), None)).is_empty());
    // Pages of three, each after the last row of the one before: every row
    // once, the tied ones split across a page boundary included.
    let mut paged = Vec::new();
    let mut cursor: Option<Cursor> = None;
    loop {
        let page = store
            .recent_invocations(
                "f",
                &InvocationFilter {
                    limit: 3,
                    status: None,
                    before: cursor.clone(),
                },
            )
            .expect("a page");
        let Some(last) = page.last() else { break };
        cursor = after(&last.id);
        paged.extend(page.into_iter().map(|r| r.id));
    }
    assert_eq!(paged, all);
    assert_eq!(ids(store, &filter(2, None, after("t1b"))), ["t1a", "i1"]);
    assert_eq!(ids(store, &filter(1, Some("failed"), after("i5"))), ["i2"]);
    assert!(ids(store, &filter(2, None, after("i0"))).is_empty());
    // An id that is not there starts nothing; another function's row is a
    // point in time like any other.
    assert!(ids(store, &filter(2, None, after("gone"))).is_empty());
    assert_eq!(ids(store, &filter(10, None, after("g0"))), all);
    // By time: those created before it.
    let before = Some(Cursor::CreatedBefore(1_002.0));
    assert_eq!(
        ids(store, &filter(10, None, before)),
        ["t1b", "t1a", "i1", "i0"]
    );
}

#[test]
fn sqlite_filters_by_outcome_and_pages() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let store = super::SqliteStore::open(&dir.path().join("alcove.db")).expect("a store");
    check_filters(&store);
}

#[test]
fn only_known_statuses_parse() {
    assert_eq!(StatusFilter::parse("ok"), Some(StatusFilter::Succeeded));
    assert_eq!(
        StatusFilter::parse("oom"),
        Some(StatusFilter::Is("oom".into()))
    );
    for bad in ["", "OK", "exited'--", "x"] {
        assert_eq!(StatusFilter::parse(bad), None, "{bad}");
    }
}
