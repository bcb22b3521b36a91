//! The shared store's schema, as numbered steps. `alcove_schema` holds the
//! number of the last step applied; a daemon applies the steps above it on
//! start, in one transaction under an advisory lock, so daemons starting
//! together apply each step once. A step is never edited once released:
//! changes are new steps.
//!
//! Every table's name starts with `alcove_`, so the store can share a
//! database (and its `public` schema) with other applications. Times that
//! records carry are DOUBLE PRECISION Unix seconds, as in the SQLite store;
//! times only the database compares (leases, due times) are TIMESTAMPTZ
//! from the database's own clock, so that daemons on machines whose clocks
//! differ still agree.

/// An advisory lock key of ours ("alcove\0\x01" read as a big-endian i64),
/// held while migrating.
pub(super) const MIGRATION_LOCK: i64 = 0x616c_636f_7665_0001;

/// Step N is `STEPS[N - 1]`.
pub(super) const STEPS: &[&str] = &[STEP_1, STEP_2, STEP_3];

const STEP_1: &str = "
CREATE TABLE alcove_functions (
    name TEXT PRIMARY KEY,
    latest INTEGER NOT NULL,
    created_at DOUBLE PRECISION NOT NULL
);
CREATE TABLE alcove_versions (
    function TEXT NOT NULL REFERENCES alcove_functions(name) ON DELETE CASCADE,
    version INTEGER NOT NULL,
    config TEXT NOT NULL,
    code_digest TEXT,
    created_at DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (function, version)
);
-- value: sealed with the daemons' secrets key (nonce ++ ciphertext ++ tag).
CREATE TABLE alcove_secrets (
    function TEXT NOT NULL,
    version INTEGER NOT NULL,
    name TEXT NOT NULL,
    value BYTEA NOT NULL,
    PRIMARY KEY (function, version, name),
    FOREIGN KEY (function, version) REFERENCES alcove_versions(function, version) ON DELETE CASCADE
);
CREATE TABLE alcove_invocations (
    id TEXT PRIMARY KEY,
    function TEXT NOT NULL,
    version INTEGER NOT NULL,
    status TEXT NOT NULL,
    is_async BOOLEAN NOT NULL,
    attempts INTEGER NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    started_at DOUBLE PRECISION,
    ended_at DOUBLE PRECISION,
    exit_code INTEGER,
    signal INTEGER,
    wall_ms DOUBLE PRECISION,
    cpu_user_ms DOUBLE PRECISION,
    cpu_sys_ms DOUBLE PRECISION,
    memory_peak_bytes BIGINT,
    pids_peak BIGINT,
    output_truncated BOOLEAN NOT NULL DEFAULT false,
    error TEXT,
    stderr BYTEA,
    response BYTEA,
    kernel TEXT,
    node TEXT,
    nodes TEXT
);
CREATE INDEX alcove_invocations_by_function ON alcove_invocations (function, created_at);
CREATE INDEX alcove_invocations_running ON alcove_invocations (started_at) WHERE status = 'running';
CREATE TABLE alcove_learned (
    function TEXT PRIMARY KEY REFERENCES alcove_functions(name) ON DELETE CASCADE,
    profile TEXT NOT NULL,
    invocations BIGINT NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL
);
CREATE TABLE alcove_code_blobs (
    digest TEXT PRIMARY KEY,
    tar BYTEA NOT NULL,
    bytes BIGINT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE TABLE alcove_queue (
    id TEXT PRIMARY KEY REFERENCES alcove_invocations(id) ON DELETE CASCADE,
    function TEXT NOT NULL,
    version INTEGER NOT NULL,
    body BYTEA NOT NULL,
    retries INTEGER NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    due_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    leased_by TEXT,
    lease_until TIMESTAMPTZ,
    created_at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp()
);
-- The claim takes the oldest due rows first, skipping the leased ones.
CREATE INDEX alcove_queue_claim ON alcove_queue (created_at, id) INCLUDE (due_at, lease_until);
CREATE INDEX alcove_queue_by_function ON alcove_queue (function);
CREATE INDEX alcove_queue_by_lessee ON alcove_queue (leased_by) WHERE leased_by IS NOT NULL;
CREATE TABLE alcove_slots (
    invocation TEXT PRIMARY KEY,
    function TEXT NOT NULL,
    node TEXT NOT NULL,
    lease_until TIMESTAMPTZ NOT NULL
);
CREATE INDEX alcove_slots_by_function ON alcove_slots (function);
CREATE INDEX alcove_slots_by_node ON alcove_slots (node);
CREATE TABLE alcove_meta (
    key TEXT PRIMARY KEY,
    value BYTEA NOT NULL
);
";

/// Taking a function's cluster-wide slot in one round trip: a client cut off
/// in the middle of a multi-statement transaction would hold the function's
/// advisory lock until its server noticed, stalling the function everywhere.
/// Each statement of a PL/pgSQL function sees what committed before it, so
/// the count after the lock is exact.
const STEP_2: &str = "
CREATE FUNCTION alcove_take_slot(f TEXT, cap INTEGER, inv TEXT, lessee TEXT, lease DOUBLE PRECISION)
RETURNS BOOLEAN LANGUAGE plpgsql AS $take$
DECLARE
    held BIGINT;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('alcove-slot:' || f)::int8);
    DELETE FROM alcove_slots WHERE function = f AND lease_until < now();
    SELECT count(*) INTO held FROM alcove_slots WHERE function = f AND invocation <> inv;
    IF held >= cap THEN
        RETURN FALSE;
    END IF;
    INSERT INTO alcove_slots (invocation, function, node, lease_until)
    VALUES (inv, f, lessee, now() + make_interval(secs => lease))
    ON CONFLICT (invocation) DO UPDATE
        SET function = f, node = lessee, lease_until = EXCLUDED.lease_until;
    RETURN TRUE;
END
$take$;
";

/// Each invocation's request and response sizes (the console shows them).
const STEP_3: &str = "
ALTER TABLE alcove_invocations ADD COLUMN request_bytes BIGINT, ADD COLUMN response_bytes BIGINT;
";
