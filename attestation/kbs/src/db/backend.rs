//! The two database engines behind [`super::Store`]: SQLite (one connection per process) and
//! PostgreSQL (an r2d2 pool). The store's queries are written once, in PostgreSQL's `$N`
//! placeholder style; for SQLite the placeholders are rewritten to `?N`. Values cross the
//! boundary as [`Value`], so every query runs unchanged on both engines.

use std::borrow::Cow;
use std::sync::Mutex;
use std::time::Duration;

use postgres::types::{ToSql, Type};
use r2d2_postgres::PostgresConnectionManager;
use rusqlite::types::{ToSqlOutput, ValueRef};
use zeroize::Zeroizing;

use super::DbError;

/// One parameter or result column.
#[derive(Debug, Clone)]
pub(crate) enum Value {
    Null,
    Int(i64),
    Text(String),
    /// Blobs may hold secrets (passphrases, sealed session state): wiped when dropped.
    Blob(Zeroizing<Vec<u8>>),
}

impl Value {
    pub(crate) fn text(s: impl Into<String>) -> Self {
        Value::Text(s.into())
    }

    pub(crate) fn blob(b: &[u8]) -> Self {
        Value::Blob(Zeroizing::new(b.to_vec()))
    }

    pub(crate) fn into_text(self) -> Result<String, DbError> {
        match self {
            Value::Text(s) => Ok(s),
            other => Err(DbError::Shape(format!(
                "expected text, got {}",
                other.kind()
            ))),
        }
    }

    pub(crate) fn into_int(self) -> Result<i64, DbError> {
        match self {
            Value::Int(i) => Ok(i),
            other => Err(DbError::Shape(format!(
                "expected an integer, got {}",
                other.kind()
            ))),
        }
    }

    pub(crate) fn into_blob(self) -> Result<Zeroizing<Vec<u8>>, DbError> {
        match self {
            Value::Blob(b) => Ok(b),
            other => Err(DbError::Shape(format!(
                "expected bytes, got {}",
                other.kind()
            ))),
        }
    }

    /// Text, or `None` for NULL.
    pub(crate) fn into_opt_text(self) -> Result<Option<String>, DbError> {
        match self {
            Value::Null => Ok(None),
            v => v.into_text().map(Some),
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            Value::Null => "NULL",
            Value::Int(_) => "an integer",
            Value::Text(_) => "text",
            Value::Blob(_) => "bytes",
        }
    }
}

/// The query interface both engines offer inside a transaction.
pub(crate) trait Conn {
    /// Runs one statement; the number of rows it changed.
    fn execute(&mut self, sql: &str, params: &[Value]) -> Result<u64, DbError>;
    /// Runs one statement; its rows.
    fn query(&mut self, sql: &str, params: &[Value]) -> Result<Vec<Vec<Value>>, DbError>;
    /// Runs several statements without parameters (migrations).
    fn batch(&mut self, sql: &str) -> Result<(), DbError>;
    fn dialect(&self) -> Dialect;
}

/// Which engine a connection talks to (migrations differ per engine).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dialect {
    Sqlite,
    Postgres,
}

/// `$N` placeholders as SQLite's `?N`.
fn sqlite_sql(sql: &str) -> Cow<'_, str> {
    if !sql.contains('$') {
        return Cow::Borrowed(sql);
    }
    let mut out = String::with_capacity(sql.len());
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '$' && chars.peek().is_some_and(char::is_ascii_digit) {
            out.push('?');
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

impl rusqlite::ToSql for Value {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::Borrowed(match self {
            Value::Null => ValueRef::Null,
            Value::Int(i) => ValueRef::Integer(*i),
            Value::Text(s) => ValueRef::Text(s.as_bytes()),
            Value::Blob(b) => ValueRef::Blob(b),
        }))
    }
}

fn from_sqlite(v: ValueRef<'_>) -> Result<Value, DbError> {
    Ok(match v {
        ValueRef::Null => Value::Null,
        ValueRef::Integer(i) => Value::Int(i),
        ValueRef::Text(t) => Value::Text(
            std::str::from_utf8(t)
                .map_err(|_| DbError::Shape("stored text is not UTF-8".into()))?
                .to_owned(),
        ),
        ValueRef::Blob(b) => Value::blob(b),
        ValueRef::Real(_) => return Err(DbError::Shape("unexpected real number".into())),
    })
}

/// A SQLite transaction on the process's one connection. BEGIN, COMMIT and ROLLBACK are
/// cached statements like every query: parsing them for each transaction (as
/// `rusqlite::Transaction` does) was a visible part of a flow's CPU (issue 23). Rolled back
/// when dropped uncommitted (an error or a panic in the transaction's body): whether one is
/// still open is the connection's own state (`is_autocommit`).
pub(crate) struct SqliteTx<'c> {
    conn: &'c rusqlite::Connection,
}

impl<'c> SqliteTx<'c> {
    fn begin(conn: &'c rusqlite::Connection, mode: TxMode) -> Result<Self, DbError> {
        let sql = match mode {
            TxMode::Write => "BEGIN IMMEDIATE",
            TxMode::Read => "BEGIN DEFERRED",
        };
        Self::step(conn, sql)?;
        Ok(SqliteTx { conn })
    }

    fn step(conn: &rusqlite::Connection, sql: &str) -> Result<(), DbError> {
        conn.prepare_cached(sql)
            .and_then(|mut s| s.execute([]))
            .map(|_| ())
            .map_err(DbError::Query)
    }

    /// A failed COMMIT can leave the transaction open (SQLITE_BUSY): then the drop rolls it
    /// back.
    fn commit(self) -> Result<(), DbError> {
        Self::step(self.conn, "COMMIT")
    }
}

impl Drop for SqliteTx<'_> {
    fn drop(&mut self) {
        if !self.conn.is_autocommit() {
            if let Err(e) = Self::step(self.conn, "ROLLBACK") {
                tracing::error!(error = %crate::error_chain(&e), "cannot roll back a SQLite transaction");
            }
        }
    }
}

impl Conn for SqliteTx<'_> {
    fn execute(&mut self, sql: &str, params: &[Value]) -> Result<u64, DbError> {
        let mut stmt = self
            .conn
            .prepare_cached(&sqlite_sql(sql))
            .map_err(DbError::Query)?;
        let n = stmt
            .execute(rusqlite::params_from_iter(params))
            .map_err(DbError::Query)?;
        Ok(n as u64)
    }

    fn query(&mut self, sql: &str, params: &[Value]) -> Result<Vec<Vec<Value>>, DbError> {
        let mut stmt = self
            .conn
            .prepare_cached(&sqlite_sql(sql))
            .map_err(DbError::Query)?;
        let columns = stmt.column_count();
        let mut rows = stmt
            .query(rusqlite::params_from_iter(params))
            .map_err(DbError::Query)?;
        let mut out = Vec::new();
        while let Some(row) = rows.next().map_err(DbError::Query)? {
            let values = (0..columns)
                .map(|i| from_sqlite(row.get_ref(i).map_err(DbError::Query)?))
                .collect::<Result<Vec<_>, _>>()?;
            out.push(values);
        }
        Ok(out)
    }

    fn batch(&mut self, sql: &str) -> Result<(), DbError> {
        self.conn.execute_batch(sql).map_err(DbError::Query)
    }

    fn dialect(&self) -> Dialect {
        Dialect::Sqlite
    }
}

/// What a transaction may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TxMode {
    /// Takes SQLite's write lock at once (`BEGIN IMMEDIATE`), so two processes on one file
    /// never deadlock upgrading a read lock.
    Write,
    /// Only reads: a WAL snapshot, without the write lock (`BEGIN DEFERRED`).
    Read,
}

/// Prepared statements kept per SQLite connection: every statement the broker runs (about
/// 40, with BEGIN/COMMIT/ROLLBACK), so none is parsed again once warm. rusqlite's default
/// of 16 evicted hot ones under a mixed load.
pub(crate) const SQLITE_STATEMENT_CACHE: usize = 64;

/// NULL is never bound (only read); this stands in its place with a type-less empty text.
static NO_TEXT: Option<String> = None;

fn pg_param(v: &Value) -> &(dyn ToSql + Sync) {
    match v {
        Value::Null => &NO_TEXT,
        Value::Int(i) => i,
        Value::Text(s) => s,
        Value::Blob(b) => &**b,
    }
}

fn pg_params(params: &[Value]) -> Vec<&(dyn ToSql + Sync)> {
    params.iter().map(pg_param).collect()
}

fn from_pg(row: &postgres::Row) -> Result<Vec<Value>, DbError> {
    (0..row.len())
        .map(|i| {
            let ty = row.columns()[i].type_();
            let v = if *ty == Type::INT8 {
                row.try_get::<_, Option<i64>>(i)
                    .map(|o| o.map_or(Value::Null, Value::Int))
            } else if *ty == Type::INT4 {
                row.try_get::<_, Option<i32>>(i)
                    .map(|o| o.map_or(Value::Null, |x| Value::Int(x.into())))
            } else if *ty == Type::TEXT || *ty == Type::VARCHAR {
                row.try_get::<_, Option<String>>(i)
                    .map(|o| o.map_or(Value::Null, Value::Text))
            } else if *ty == Type::BYTEA {
                row.try_get::<_, Option<Vec<u8>>>(i)
                    .map(|o| o.map_or(Value::Null, |b| Value::Blob(Zeroizing::new(b))))
            } else {
                return Err(DbError::Shape(format!("unexpected column type {ty}")));
            };
            v.map_err(DbError::Postgres)
        })
        .collect()
}

impl Conn for postgres::Transaction<'_> {
    fn execute(&mut self, sql: &str, params: &[Value]) -> Result<u64, DbError> {
        postgres::Transaction::execute(self, sql, &pg_params(params)).map_err(DbError::Postgres)
    }

    fn query(&mut self, sql: &str, params: &[Value]) -> Result<Vec<Vec<Value>>, DbError> {
        postgres::Transaction::query(self, sql, &pg_params(params))
            .map_err(DbError::Postgres)?
            .iter()
            .map(from_pg)
            .collect()
    }

    fn batch(&mut self, sql: &str) -> Result<(), DbError> {
        self.batch_execute(sql).map_err(DbError::Postgres)
    }

    fn dialect(&self) -> Dialect {
        Dialect::Postgres
    }
}

/// Pool settings for PostgreSQL (`--db-pool-size`, `--db-timeout-ms`); SQLite uses the
/// timeout as its busy timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolOptions {
    /// Connections kept at most.
    pub size: u32,
    /// Connect, checkout (waiting for a free connection) and lock-wait timeout.
    pub timeout: Duration,
}

/// Default connections per broker: enough for the default handler count.
pub const DEFAULT_POOL_SIZE: u32 = 16;
/// Default connect/checkout timeout.
pub const DEFAULT_DB_TIMEOUT: Duration = Duration::from_secs(5);

impl Default for PoolOptions {
    fn default() -> Self {
        PoolOptions {
            size: DEFAULT_POOL_SIZE,
            timeout: DEFAULT_DB_TIMEOUT,
        }
    }
}

pub(crate) type PgPool = r2d2::Pool<PostgresConnectionManager<postgres::NoTls>>;

/// An open engine.
pub(crate) enum Engine {
    /// One connection per process behind a mutex: every query is short, and SQLite
    /// serialises writers anyway.
    Sqlite(Mutex<rusqlite::Connection>),
    Postgres(PgPool),
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Engine::Sqlite(_) => "Sqlite",
            Engine::Postgres(_) => "Postgres",
        })
    }
}

impl Engine {
    /// Connects a pool to the PostgreSQL server `url` names (`postgres://…`). TLS to the
    /// database is not offered: run it on the same host or a private network.
    pub(crate) fn postgres(url: &str, opts: PoolOptions) -> Result<Self, DbError> {
        let mut config: postgres::Config = url
            .parse()
            .map_err(|e| DbError::Connect(format!("invalid PostgreSQL URL: {e}")))?;
        config.connect_timeout(opts.timeout);
        let manager = PostgresConnectionManager::new(config, postgres::NoTls);
        let pool = r2d2::Pool::builder()
            .max_size(opts.size.max(1))
            .min_idle(Some(1))
            .connection_timeout(opts.timeout)
            .build(manager)
            .map_err(|e| DbError::Connect(format!("cannot reach PostgreSQL: {e}")))?;
        Ok(Engine::Postgres(pool))
    }

    /// Runs `f` in one transaction: committed when it returns `Ok`, rolled back otherwise.
    /// `mode` says whether it writes ([`TxMode`]); a read transaction that writes fails
    /// only on contention with another process, never silently.
    pub(crate) fn tx<T>(
        &self,
        mode: TxMode,
        f: impl FnOnce(&mut dyn Conn) -> Result<T, DbError>,
    ) -> Result<T, DbError> {
        match self {
            Engine::Sqlite(conn) => {
                let conn = conn.lock().map_err(|_| DbError::Poisoned)?;
                let mut tx = SqliteTx::begin(&conn, mode)?;
                let out = f(&mut tx)?;
                tx.commit()?;
                Ok(out)
            }
            Engine::Postgres(pool) => {
                let mut client = pool.get().map_err(DbError::Pool)?;
                let mut tx = client.transaction().map_err(DbError::Postgres)?;
                let out = f(&mut tx)?;
                tx.commit().map_err(DbError::Postgres)?;
                Ok(out)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_rewritten_for_sqlite() {
        assert_eq!(
            sqlite_sql("SELECT a FROM t WHERE b = $1 AND c = $12 AND d = '$'"),
            "SELECT a FROM t WHERE b = ?1 AND c = ?12 AND d = '$'"
        );
        assert!(matches!(sqlite_sql("SELECT 1"), Cow::Borrowed(_)));
    }
}
