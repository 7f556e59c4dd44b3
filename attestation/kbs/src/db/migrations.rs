//! Versioned schema: an ordered list of migrations per engine, applied at start in one
//! transaction. `schema_version` holds the number of migrations applied; a database newer
//! than this broker is refused rather than misread. On PostgreSQL a transaction-scoped
//! advisory lock serialises replicas that start together; on SQLite the transaction's write
//! lock does.

use super::backend::{Conn, Dialect, Value};
use super::DbError;

/// Advisory lock key for migrations ("krunkbs" in ASCII).
const MIGRATION_LOCK: i64 = 0x006b_7275_6e6b_6273;

/// SQLite migrations, in order. The first is the schema brokers wrote before versioning
/// (`IF NOT EXISTS`, so it adopts their databases); [`sqlite_legacy_columns`] then adds the
/// columns older ones lacked.
const SQLITE: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS workloads (
        id TEXT PRIMARY KEY,
        tee TEXT NOT NULL,
        sev_policy INTEGER NOT NULL,
        snp TEXT NOT NULL,
        sev TEXT NOT NULL DEFAULT '{}',
        measurement_kind TEXT NOT NULL DEFAULT 'bound'
    );
    CREATE TABLE IF NOT EXISTS measurements (
        workload_id TEXT NOT NULL REFERENCES workloads(id) ON DELETE CASCADE,
        digest BLOB NOT NULL,
        PRIMARY KEY (workload_id, digest)
    );
    CREATE INDEX IF NOT EXISTS measurements_digest ON measurements(digest);
    CREATE TABLE IF NOT EXISTS secrets (
        workload_id TEXT NOT NULL REFERENCES workloads(id) ON DELETE CASCADE,
        name TEXT NOT NULL,
        data BLOB NOT NULL,
        PRIMARY KEY (workload_id, name)
    );",
    "CREATE TABLE sessions (
        id TEXT PRIMARY KEY,
        protocol TEXT NOT NULL,
        nonce TEXT NOT NULL,
        expires_ms INTEGER NOT NULL,
        state TEXT NOT NULL,
        ended TEXT,
        stage BLOB NOT NULL
    );
    CREATE INDEX sessions_expires ON sessions(expires_ms);
    CREATE TABLE session_releases (
        session_id TEXT NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
        resource TEXT NOT NULL,
        PRIMARY KEY (session_id, resource)
    );",
    // Open sessions only, so the count `Sessions::insert` makes for its limit reads the open
    // ones rather than every session not yet collected (issue 23).
    "CREATE INDEX sessions_open ON sessions(expires_ms) WHERE ended IS NULL;",
];

/// PostgreSQL migrations, in order; the same tables as [`SQLITE`].
const POSTGRES: &[&str] = &[
    "CREATE TABLE workloads (
        id TEXT PRIMARY KEY,
        tee TEXT NOT NULL,
        sev_policy BIGINT NOT NULL,
        snp TEXT NOT NULL,
        sev TEXT NOT NULL DEFAULT '{}',
        measurement_kind TEXT NOT NULL DEFAULT 'bound'
    );
    CREATE TABLE measurements (
        workload_id TEXT NOT NULL REFERENCES workloads(id) ON DELETE CASCADE,
        digest BYTEA NOT NULL,
        PRIMARY KEY (workload_id, digest)
    );
    CREATE INDEX measurements_digest ON measurements(digest);
    CREATE TABLE secrets (
        workload_id TEXT NOT NULL REFERENCES workloads(id) ON DELETE CASCADE,
        name TEXT NOT NULL,
        data BYTEA NOT NULL,
        PRIMARY KEY (workload_id, name)
    );",
    "CREATE TABLE sessions (
        id TEXT PRIMARY KEY,
        protocol TEXT NOT NULL,
        nonce TEXT NOT NULL,
        expires_ms BIGINT NOT NULL,
        state TEXT NOT NULL,
        ended TEXT,
        stage BYTEA NOT NULL
    );
    CREATE INDEX sessions_expires ON sessions(expires_ms);
    CREATE TABLE session_releases (
        session_id TEXT NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
        resource TEXT NOT NULL,
        PRIMARY KEY (session_id, resource)
    );",
    // Open sessions only, so the count `Sessions::insert` makes for its limit reads the open
    // ones rather than every session not yet collected (issue 23).
    "CREATE INDEX sessions_open ON sessions(expires_ms) WHERE ended IS NULL;",
];

/// Brings the database up to the latest schema; returns the version it had.
pub(crate) fn migrate(c: &mut dyn Conn) -> Result<usize, DbError> {
    let dialect = c.dialect();
    if dialect == Dialect::Postgres {
        // execute, not query: the function returns `void`, which has no Value.
        c.execute(
            "SELECT pg_advisory_xact_lock($1)",
            &[Value::Int(MIGRATION_LOCK)],
        )?;
    }
    c.batch("CREATE TABLE IF NOT EXISTS schema_version (version BIGINT NOT NULL)")?;
    let current = c
        .query("SELECT max(version) FROM schema_version", &[])?
        .into_iter()
        .next()
        .and_then(|row| row.into_iter().next())
        .map_or(Ok(0), |v| match v {
            Value::Null => Ok(0),
            v => v.into_int(),
        })?;
    let current = usize::try_from(current)
        .map_err(|_| DbError::Shape(format!("schema version {current} is negative")))?;
    let list = match dialect {
        Dialect::Sqlite => SQLITE,
        Dialect::Postgres => POSTGRES,
    };
    if current > list.len() {
        return Err(DbError::TooNew {
            found: current,
            known: list.len(),
        });
    }
    for (i, sql) in list.iter().enumerate().skip(current) {
        c.batch(sql)?;
        if dialect == Dialect::Sqlite && i == 0 {
            sqlite_legacy_columns(c)?;
        }
    }
    if current < list.len() {
        c.execute("DELETE FROM schema_version", &[])?;
        c.execute(
            "INSERT INTO schema_version (version) VALUES ($1)",
            &[Value::Int(list.len() as i64)],
        )?;
        tracing::info!(from = current, to = list.len(), "database schema migrated");
    }
    Ok(current)
}

/// Columns that unversioned brokers added later: `sev` (`{}`: no SEV requirements of its
/// own) and `measurement_kind` (`bound`: older brokers matched every digest directly).
fn sqlite_legacy_columns(c: &mut dyn Conn) -> Result<(), DbError> {
    let columns = c.query("SELECT name FROM pragma_table_info('workloads')", &[])?;
    let has = |name: &str| {
        columns
            .iter()
            .any(|row| matches!(row.first(), Some(Value::Text(n)) if n == name))
    };
    if !has("sev") {
        c.batch("ALTER TABLE workloads ADD COLUMN sev TEXT NOT NULL DEFAULT '{}'")?;
    }
    if !has("measurement_kind") {
        c.batch("ALTER TABLE workloads ADD COLUMN measurement_kind TEXT NOT NULL DEFAULT 'bound'")?;
    }
    Ok(())
}
