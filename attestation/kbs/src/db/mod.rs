//! Persistent store (SQLite or PostgreSQL): workloads, their allowed launch measurements,
//! their secrets, and the attestation sessions (src/sessions.rs) any replica can serve.

mod backend;
mod migrations;

use std::path::Path;

use rusqlite::Connection;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

pub(crate) use backend::{Conn, Value};
use backend::{Engine, TxMode};
pub use backend::{PoolOptions, DEFAULT_DB_TIMEOUT, DEFAULT_POOL_SIZE};

use crate::seal::{self, SealError, SecretsKey};

/// Name of the secret released by the reference protocol's `/key/<workload_id>`.
pub const KEY_SECRET: &str = "key";

/// Errors from the store.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("cannot open the database")]
    Open(#[source] rusqlite::Error),
    #[error("database query failed")]
    Query(#[source] rusqlite::Error),
    #[error("stored workload policy is invalid")]
    StoredPolicy(#[source] serde_json::Error),
    #[error("database lock is poisoned")]
    Poisoned,
    #[error("cannot make the database file {0} owner-only")]
    Permissions(String, #[source] std::io::Error),
    #[error("{0}")]
    Connect(String),
    #[error("PostgreSQL query failed")]
    Postgres(#[source] postgres::Error),
    #[error("no database connection free in time")]
    Pool(#[source] r2d2::Error),
    #[error("unexpected database content: {0}")]
    Shape(String),
    #[error("stored secret")]
    Seal(#[from] crate::seal::SealError),
    #[error("the database has schema version {found}, newer than this broker's {known}: upgrade the broker")]
    TooNew { found: usize, known: usize },
}

/// Mode of the database and of the `-wal`/`-shm` files SQLite puts beside it.
const DB_FILE_MODE: u32 = 0o600;

/// Creates the database file owner-only, or narrows existing database files to owner-only.
/// SQLite creates `-wal` and `-shm` with the database file's mode (it `fchmod`s them, so the
/// umask does not widen them); existing ones from an older run are narrowed here.
fn owner_only(path: &Path) -> Result<(), DbError> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let err = |p: &Path| {
        let shown = p.display().to_string();
        move |e| DbError::Permissions(shown, e)
    };
    // Created with 0600 (the umask can only clear bits) and then set exactly: a umask that
    // clears the owner's bits would otherwise leave a file SQLite cannot write.
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .mode(DB_FILE_MODE)
        .open(path)
        .map_err(err(path))?;
    let beside = |suffix: &str| {
        let mut name = path.as_os_str().to_owned();
        name.push(suffix);
        std::path::PathBuf::from(name)
    };
    let (wal, shm) = (beside("-wal"), beside("-shm"));
    for file in [path, wal.as_path(), shm.as_path()] {
        let meta = match std::fs::metadata(file) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(err(file)(e)),
        };
        let mode = meta.permissions().mode() & 0o7777;
        if mode != DB_FILE_MODE {
            if mode & 0o077 != 0 {
                tracing::warn!(file = %file.display(), mode = format!("{mode:o}"), "database file was open to group or others; narrowed to 0600");
            }
            std::fs::set_permissions(file, std::fs::Permissions::from_mode(DB_FILE_MODE))
                .map_err(err(file))?;
        }
    }
    Ok(())
}

/// Which launch flow a workload uses.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum TeeKind {
    Sev,
    Snp,
}

impl TeeKind {
    fn as_str(self) -> &'static str {
        match self {
            TeeKind::Sev => "sev",
            TeeKind::Snp => "snp",
        }
    }

    /// Launch digest length: SHA-256 for SEV/SEV-ES, SHA-384 for SNP.
    pub fn digest_len(self) -> usize {
        match self {
            TeeKind::Sev => 32,
            TeeKind::Snp => 48,
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "sev" => Some(TeeKind::Sev),
            "snp" => Some(TeeKind::Snp),
            _ => None,
        }
    }
}

/// Minimum TCB component versions (SVNs).
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MinTcb {
    #[serde(default)]
    pub bootloader: u8,
    #[serde(default)]
    pub tee: u8,
    #[serde(default)]
    pub snp: u8,
    #[serde(default)]
    pub microcode: u8,
}

impl std::fmt::Display for MinTcb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}:{}:{}:{}",
            self.bootloader, self.tee, self.snp, self.microcode
        )
    }
}

impl std::str::FromStr for MinTcb {
    type Err = String;

    /// `bootloader:tee:snp:microcode`, each 0..=255.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parts: Vec<u8> = s
            .split(':')
            .map(|p| {
                p.trim()
                    .parse::<u8>()
                    .map_err(|_| format!("TCB component {p:?} is not a number from 0 to 255"))
            })
            .collect::<Result<_, _>>()?;
        let [bootloader, tee, snp, microcode] = parts[..] else {
            return Err("expected bootloader:tee:snp:microcode, e.g. 3:0:8:115".into());
        };
        Ok(MinTcb {
            bootloader,
            tee,
            snp,
            microcode,
        })
    }
}

/// A legacy SEV firmware version as PLATFORM_STATUS reports it: API major.minor and build
/// id. Ordered by (major, minor, build); written `MAJOR.MINOR.BUILD` (`MAJOR.MINOR` means
/// build 0). `0.0.0`, the default, is no minimum.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct SevFirmware {
    pub major: u8,
    pub minor: u8,
    pub build: u8,
}

impl std::fmt::Display for SevFirmware {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.build)
    }
}

impl std::str::FromStr for SevFirmware {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parts: Vec<u8> = s
            .trim()
            .split('.')
            .map(|p| {
                p.parse::<u8>()
                    .map_err(|_| format!("firmware component {p:?} is not a number from 0 to 255"))
            })
            .collect::<Result<_, _>>()?;
        let (major, minor, build) = match parts[..] {
            [major, minor] => (major, minor, 0),
            [major, minor, build] => (major, minor, build),
            _ => return Err("expected MAJOR.MINOR.BUILD, e.g. 1.55.21".into()),
        };
        Ok(SevFirmware {
            major,
            minor,
            build,
        })
    }
}

impl Serialize for SevFirmware {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for SevFirmware {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// What a legacy SEV/SEV-ES launch must satisfy besides the chain, policy and measurement.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SevRequirements {
    /// Lowest firmware accepted; the broker's `--min-sev-fw` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_fw: Option<SevFirmware>,
}

/// The HOST_DATA a report must carry: 32 bytes, 64 hex digits in JSON and on the command
/// line. The launch sets it from the TEE config's `tee_data.host_data` (unmeasured but
/// reported), so requiring it ties a registration to the host-side launch settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostData(pub [u8; 32]);

impl std::str::FromStr for HostData {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bytes = hex::decode(s.trim()).map_err(|_| "HOST_DATA is not hex".to_owned())?;
        bytes
            .try_into()
            .map(HostData)
            .map_err(|_| "HOST_DATA must be 32 bytes (64 hex digits)".to_owned())
    }
}

impl Serialize for HostData {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(self.0))
    }
}

impl<'de> Deserialize<'de> for HostData {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// What an SNP report must satisfy besides signature, binding and measurement.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnpRequirements {
    #[serde(default)]
    pub allow_debug: bool,
    #[serde(default)]
    pub allow_migration_agent: bool,
    /// Refuse a guest policy that lets the host run the guest with SMT (POLICY bit 16): for
    /// workloads that must not share a core with another tenant's thread.
    #[serde(default)]
    pub forbid_smt: bool,
    /// Lowest reported TCB accepted; the broker's `--min-tcb` when absent. Rows written
    /// before the default existed hold an explicit value (0:0:0:0 when none was given).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_tcb: Option<MinTcb>,
    #[serde(default = "default_min_version")]
    pub min_report_version: u32,
    #[serde(default)]
    pub max_vmpl: u32,
    /// HOST_DATA the report must carry; any when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_data: Option<HostData>,
}

fn default_min_version() -> u32 {
    2
}

impl Default for SnpRequirements {
    fn default() -> Self {
        SnpRequirements {
            allow_debug: false,
            allow_migration_agent: false,
            forbid_smt: false,
            min_tcb: None,
            min_report_version: default_min_version(),
            max_vmpl: 0,
            host_data: None,
        }
    }
}

/// A registered workload (without its secrets).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Workload {
    pub id: String,
    pub tee: TeeKind,
    /// SEV API policy word for SEV/SEV-ES launches (ignored for SNP).
    pub sev_policy: u32,
    #[serde(default)]
    pub snp: SnpRequirements,
    /// SEV/SEV-ES requirements (ignored for SNP).
    #[serde(default)]
    pub sev: SevRequirements,
    /// Allowed launch digests, lowercase hex.
    pub measurements: Vec<String>,
    /// What the digests are: `bound` (matched directly) or `unbound` (buildah's
    /// `krunfw_measurement`; checked through the launch's host.json, src/unbound.rs).
    #[serde(default)]
    pub measurement_kind: MeasurementKind,
}

pub use krun_attestation::reference::MeasurementKind;

fn kind_str(kind: MeasurementKind) -> &'static str {
    match kind {
        MeasurementKind::Bound => "bound",
        MeasurementKind::Unbound => "unbound",
    }
}

fn parse_kind(s: &str) -> Option<MeasurementKind> {
    match s {
        "bound" => Some(MeasurementKind::Bound),
        "unbound" => Some(MeasurementKind::Unbound),
        _ => None,
    }
}

/// The `workloads` columns [`Store::row_to_workload`] reads, in its order.
const WORKLOAD_COLUMNS: &str = "id, tee, sev_policy, snp, sev, measurement_kind";

/// Whether [`Store::register`] may replace an existing workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutMode {
    /// Insert or replace (admin token, admin CLI).
    Replace,
    /// Insert a new id only (unauthenticated registration).
    CreateOnly,
}

/// The store: workloads, secrets and attestation sessions, in SQLite (one machine) or
/// PostgreSQL (replicas sharing one database).
#[derive(Debug)]
pub struct Store {
    engine: Engine,
    /// Seals secrets and session state at rest (`--secrets-key-file`).
    secrets_key: Option<SecretsKey>,
}

/// Whether `db` (the `--db` argument) names a PostgreSQL server rather than a SQLite file.
pub fn is_postgres_url(db: &str) -> bool {
    db.starts_with("postgres://") || db.starts_with("postgresql://")
}

impl Store {
    /// Opens (creating if needed) the SQLite database at `path`. The database holds
    /// passphrases: it is created owner-only whatever the umask, and an existing database or
    /// WAL/shared-memory file readable by others is narrowed to 0600.
    pub fn open(path: &Path) -> Result<Self, DbError> {
        Self::open_sqlite(path, PoolOptions::default())
    }

    /// Opens the store `db` names: a `postgres://` URL, or a SQLite file path.
    pub fn connect(db: &str, opts: PoolOptions) -> Result<Self, DbError> {
        if is_postgres_url(db) {
            let store = Store {
                engine: Engine::postgres(db, opts)?,
                secrets_key: None,
            };
            store.engine.tx(TxMode::Write, migrations::migrate)?;
            Ok(store)
        } else {
            Self::open_sqlite(Path::new(db), opts)
        }
    }

    fn open_sqlite(path: &Path, opts: PoolOptions) -> Result<Self, DbError> {
        owner_only(path)?;
        let conn = Connection::open(path).map_err(DbError::Open)?;
        conn.busy_timeout(opts.timeout).map_err(DbError::Open)?;
        conn.set_prepared_statement_cache_capacity(backend::SQLITE_STATEMENT_CACHE);
        // WAL with synchronous=FULL: every commit is on disk before the answer, so a power
        // failure loses neither a registration nor the record that a session's key was
        // released (NORMAL could roll both back).
        conn.execute_batch(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON;",
        )
        .map_err(DbError::Open)?;
        let store = Store {
            engine: Engine::Sqlite(std::sync::Mutex::new(conn)),
            secrets_key: None,
        };
        store.engine.tx(TxMode::Write, migrations::migrate)?;
        Ok(store)
    }

    /// Which engine the store uses.
    pub fn engine_name(&self) -> &'static str {
        match self.engine {
            Engine::Sqlite(_) => "sqlite",
            Engine::Postgres(_) => "postgres",
        }
    }

    /// Schema version of the database (number of migrations applied).
    pub fn schema_version(&self) -> Result<usize, DbError> {
        self.read(|c| {
            let v = first(c.query("SELECT max(version) FROM schema_version", &[])?)?;
            usize::try_from(v.into_int()?).map_err(|_| DbError::Shape("negative version".into()))
        })
    }

    /// A trivial query: whether the database answers (`/healthz`).
    pub fn ping(&self) -> Result<(), DbError> {
        self.read(|c| c.query("SELECT 1", &[]).map(|_| ()))
    }

    /// The store, sealing what it writes with `key` from now on (and opening what was
    /// sealed with it).
    pub fn with_secrets_key(mut self, key: SecretsKey) -> Self {
        self.secrets_key = Some(key);
        self
    }

    /// Whether secrets are sealed at rest.
    pub fn seals_secrets(&self) -> bool {
        self.secrets_key.is_some()
    }

    /// Checks that every sealed secret and session in the database is sealed under this
    /// store's key, so a broker started with the wrong key (or none) says so at start
    /// rather than failing each release. Returns how many values are still unsealed.
    pub fn check_sealed(&self) -> Result<usize, DbError> {
        self.read(|c| {
            let mut unsealed = 0;
            let rows = c.query("SELECT data FROM secrets", &[])?;
            let sessions = c.query("SELECT stage FROM sessions WHERE ended IS NULL", &[])?;
            for row in rows.into_iter().chain(sessions) {
                let data = first(vec![row])?.into_blob()?;
                match (&self.secrets_key, seal::sealed_key_id(&data)) {
                    (_, None) => unsealed += 1,
                    (Some(k), Some(id)) if k.id_bytes() == id => {}
                    (Some(k), Some(id)) => {
                        return Err(SealError::WrongKey {
                            found: hex::encode(id),
                            have: k.id(),
                        }
                        .into())
                    }
                    (None, Some(id)) => return Err(SealError::NoKey(hex::encode(id)).into()),
                }
            }
            Ok(unsealed)
        })
    }

    /// Re-seals every secret and open session under `new` (or stores them unsealed when
    /// `new` is `None`), opening them with `old` (values stored unsealed need no key). One
    /// transaction: a failure changes nothing. Returns how many values were rewritten.
    pub fn rotate_secrets(
        &self,
        old: Option<&SecretsKey>,
        new: Option<&SecretsKey>,
    ) -> Result<usize, DbError> {
        self.tx(|c| {
            let mut n = 0;
            for row in c.query("SELECT workload_id, name, data FROM secrets", &[])? {
                let [w, name, data] = <[Value; 3]>::try_from(row)
                    .map_err(|_| DbError::Shape("secret row has the wrong columns".into()))?;
                let (w, name) = (w.into_text()?, name.into_text()?);
                let ctx = seal::secret_context(&w, &name);
                let plain = seal::open_with(old, &data.into_blob()?, &ctx)?;
                let sealed = seal::seal_with(new, &plain, &ctx)?;
                c.execute(
                    "UPDATE secrets SET data = $3 WHERE workload_id = $1 AND name = $2",
                    &[Value::Text(w), Value::Text(name), Value::Blob(sealed)],
                )?;
                n += 1;
            }
            let sessions = c.query("SELECT id, stage FROM sessions WHERE ended IS NULL", &[])?;
            for row in sessions {
                let [id, stage] = <[Value; 2]>::try_from(row)
                    .map_err(|_| DbError::Shape("session row has the wrong columns".into()))?;
                let id = id.into_text()?;
                let ctx = seal::session_context(&id);
                let plain = seal::open_with(old, &stage.into_blob()?, &ctx)?;
                let sealed = seal::seal_with(new, &plain, &ctx)?;
                c.execute(
                    "UPDATE sessions SET stage = $2 WHERE id = $1",
                    &[Value::Text(id), Value::Blob(sealed)],
                )?;
                n += 1;
            }
            Ok(n)
        })
    }

    /// Session state as stored: sealed (it holds SEV transport keys and recipient keys)
    /// when the store has a secrets key.
    pub(crate) fn seal_session(
        &self,
        id: &str,
        plain: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, DbError> {
        Ok(seal::seal_with(
            self.secrets_key.as_ref(),
            plain,
            &seal::session_context(id),
        )?)
    }

    /// Session state as [`Store::seal_session`] was given it.
    pub(crate) fn open_session(
        &self,
        id: &str,
        stored: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, DbError> {
        Ok(seal::open_with(
            self.secrets_key.as_ref(),
            stored,
            &seal::session_context(id),
        )?)
    }

    /// Runs `f` in one transaction that may write.
    pub(crate) fn tx<T>(
        &self,
        f: impl FnOnce(&mut dyn Conn) -> Result<T, DbError>,
    ) -> Result<T, DbError> {
        self.engine.tx(TxMode::Write, f)
    }

    /// Runs `f`, which only reads, in one transaction (one consistent snapshot). On SQLite
    /// it does not take the write lock.
    pub(crate) fn read<T>(
        &self,
        f: impl FnOnce(&mut dyn Conn) -> Result<T, DbError>,
    ) -> Result<T, DbError> {
        self.engine.tx(TxMode::Read, f)
    }

    /// Inserts or replaces a workload and its measurements (re-registration overwrites, as
    /// reference-kbs does). Secrets are kept unless replaced separately.
    pub fn put_workload(&self, w: &Workload, digests: &[Vec<u8>]) -> Result<(), DbError> {
        self.register(w, digests, None, PutMode::Replace)
            .map(|_| ())
    }

    /// Stores a workload, its measurements and optionally its `key` secret in one
    /// transaction. With [`PutMode::CreateOnly`] nothing is written when the id exists; the
    /// answer says whether anything was written.
    pub fn register(
        &self,
        w: &Workload,
        digests: &[Vec<u8>],
        key: Option<&[u8]>,
        mode: PutMode,
    ) -> Result<bool, DbError> {
        let snp = serde_json::to_string(&w.snp).map_err(DbError::StoredPolicy)?;
        let sev = serde_json::to_string(&w.sev).map_err(DbError::StoredPolicy)?;
        let kind = kind_str(w.measurement_kind);
        let row = [
            Value::text(&w.id),
            Value::text(w.tee.as_str()),
            Value::Int(w.sev_policy.into()),
            Value::Text(snp),
            Value::Text(sev),
            Value::text(kind),
        ];
        self.tx(|c| {
            let written = match mode {
                PutMode::Replace => c.execute(
                    "INSERT INTO workloads (id, tee, sev_policy, snp, sev, measurement_kind)
                     VALUES ($1, $2, $3, $4, $5, $6)
                     ON CONFLICT(id) DO UPDATE SET tee = $2, sev_policy = $3, snp = $4, sev = $5,
                         measurement_kind = $6",
                    &row,
                )?,
                // The check and the insert are one statement inside the write transaction:
                // two concurrent registrations of a new id cannot both create it.
                PutMode::CreateOnly => c.execute(
                    "INSERT INTO workloads (id, tee, sev_policy, snp, sev, measurement_kind)
                     VALUES ($1, $2, $3, $4, $5, $6)
                     ON CONFLICT(id) DO NOTHING",
                    &row,
                )?,
            };
            if written == 0 {
                return Ok(false);
            }
            c.execute(
                "DELETE FROM measurements WHERE workload_id = $1",
                &[Value::text(&w.id)],
            )?;
            for d in digests {
                c.execute(
                    "INSERT INTO measurements (workload_id, digest) VALUES ($1, $2)
                     ON CONFLICT DO NOTHING",
                    &[Value::text(&w.id), Value::blob(d)],
                )?;
            }
            if let Some(data) = key {
                self.put_secret_row(c, &w.id, KEY_SECRET, data)?;
            }
            Ok(true)
        })
    }

    /// Removes a workload with its measurements and secrets. Returns whether it existed.
    pub fn remove_workload(&self, id: &str) -> Result<bool, DbError> {
        self.tx(|c| c.execute("DELETE FROM workloads WHERE id = $1", &[Value::text(id)]))
            .map(|n| n > 0)
    }

    fn row_to_workload(c: &mut dyn Conn, row: Vec<Value>) -> Result<Option<Workload>, DbError> {
        let [id, tee, sev_policy, snp, sev, kind] = <[Value; 6]>::try_from(row)
            .map_err(|_| DbError::Shape("workload row has the wrong columns".into()))?;
        let id = id.into_text()?;
        let (Some(tee), Some(measurement_kind)) = (
            TeeKind::parse(&tee.into_text()?),
            parse_kind(&kind.into_text()?),
        ) else {
            return Ok(None);
        };
        let Ok(sev_policy) = u32::try_from(sev_policy.into_int()?) else {
            return Ok(None);
        };
        let (Ok(snp), Ok(sev)) = (
            serde_json::from_str(&snp.into_text()?),
            serde_json::from_str(&sev.into_text()?),
        ) else {
            return Ok(None);
        };
        let measurements = c
            .query(
                "SELECT digest FROM measurements WHERE workload_id = $1 ORDER BY digest",
                &[Value::text(&id)],
            )?
            .into_iter()
            .map(|r| first(vec![r])?.into_blob().map(hex::encode))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Some(Workload {
            id,
            tee,
            sev_policy,
            snp,
            sev,
            measurements,
            measurement_kind,
        }))
    }

    /// Looks up one workload.
    pub fn workload(&self, id: &str) -> Result<Option<Workload>, DbError> {
        self.read(|c| {
            let row = c
                .query(
                    &format!("SELECT {WORKLOAD_COLUMNS} FROM workloads WHERE id = $1"),
                    &[Value::text(id)],
                )?
                .into_iter()
                .next();
            match row {
                Some(row) => Self::row_to_workload(c, row),
                None => Ok(None),
            }
        })
    }

    /// All workloads, by id.
    pub fn workloads(&self) -> Result<Vec<Workload>, DbError> {
        self.read(|c| {
            let rows = c.query(
                &format!("SELECT {WORKLOAD_COLUMNS} FROM workloads ORDER BY id"),
                &[],
            )?;
            let mut out = Vec::new();
            for row in rows {
                if let Some(w) = Self::row_to_workload(c, row)? {
                    out.push(w);
                }
            }
            Ok(out)
        })
    }

    /// Ids of the workloads of kind `tee` that allow launch digest `digest` directly (bound
    /// digests only: an unbound digest is never matched as it stands).
    pub fn workloads_with_measurement(
        &self,
        tee: TeeKind,
        digest: &[u8],
    ) -> Result<Vec<String>, DbError> {
        self.read(|c| {
            c.query(
                "SELECT w.id FROM workloads w JOIN measurements m ON m.workload_id = w.id
                 WHERE m.digest = $1 AND w.tee = $2 AND w.measurement_kind = 'bound'
                 ORDER BY w.id",
                &[Value::blob(digest), Value::text(tee.as_str())],
            )?
            .into_iter()
            .map(|r| first(vec![r])?.into_text())
            .collect()
        })
    }

    /// Stores a secret of a workload. Returns false if the workload does not exist.
    pub fn put_secret(&self, workload: &str, name: &str, data: &[u8]) -> Result<bool, DbError> {
        self.tx(|c| {
            let exists = c.query(
                "SELECT 1 FROM workloads WHERE id = $1",
                &[Value::text(workload)],
            )?;
            if exists.is_empty() {
                return Ok(false);
            }
            self.put_secret_row(c, workload, name, data)?;
            Ok(true)
        })
    }

    /// Removes a secret. Returns whether it existed.
    pub fn remove_secret(&self, workload: &str, name: &str) -> Result<bool, DbError> {
        self.tx(|c| {
            c.execute(
                "DELETE FROM secrets WHERE workload_id = $1 AND name = $2",
                &[Value::text(workload), Value::text(name)],
            )
        })
        .map(|n| n > 0)
    }

    /// Reads a secret.
    pub fn secret(
        &self,
        workload: &str,
        name: &str,
    ) -> Result<Option<Zeroizing<Vec<u8>>>, DbError> {
        self.read(|c| {
            c.query(
                "SELECT data FROM secrets WHERE workload_id = $1 AND name = $2",
                &[Value::text(workload), Value::text(name)],
            )?
            .into_iter()
            .next()
            .map(|r| {
                let stored = first(vec![r])?.into_blob()?;
                Ok(seal::open_with(
                    self.secrets_key.as_ref(),
                    &stored,
                    &seal::secret_context(workload, name),
                )?)
            })
            .transpose()
        })
    }

    /// Writes one secret, sealed when the store has a secrets key (bound to the workload and
    /// name: a sealed value copied to another row does not open).
    fn put_secret_row(
        &self,
        c: &mut dyn Conn,
        workload: &str,
        name: &str,
        data: &[u8],
    ) -> Result<(), DbError> {
        let stored = seal::seal_with(
            self.secrets_key.as_ref(),
            data,
            &seal::secret_context(workload, name),
        )?;
        c.execute(
            "INSERT INTO secrets (workload_id, name, data) VALUES ($1, $2, $3)
             ON CONFLICT(workload_id, name) DO UPDATE SET data = $3",
            &[
                Value::text(workload),
                Value::text(name),
                Value::Blob(stored),
            ],
        )
        .map(|_| ())
    }

    /// Names of a workload's secrets.
    pub fn secret_names(&self, workload: &str) -> Result<Vec<String>, DbError> {
        self.read(|c| {
            c.query(
                "SELECT name FROM secrets WHERE workload_id = $1 ORDER BY name",
                &[Value::text(workload)],
            )?
            .into_iter()
            .map(|r| first(vec![r])?.into_text())
            .collect()
        })
    }
}

/// The first column of the first row.
pub(crate) fn first(rows: Vec<Vec<Value>>) -> Result<Value, DbError> {
    rows.into_iter()
        .next()
        .and_then(|r| r.into_iter().next())
        .ok_or_else(|| DbError::Shape("query returned no value".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn workload(id: &str, tee: TeeKind) -> Workload {
        Workload {
            id: id.into(),
            tee,
            sev_policy: 5,
            snp: Default::default(),
            sev: Default::default(),
            measurements: vec![],
            measurement_kind: MeasurementKind::Bound,
        }
    }

    #[test]
    fn secrets_are_sealed_at_rest_and_need_the_right_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kbs.db");
        let key = || SecretsKey::new([1; 32]);
        let s = Store::open(&path).unwrap().with_secrets_key(key());
        s.register(
            &workload("w", TeeKind::Snp),
            &[vec![1; 48]],
            Some(b"luks-passphrase"),
            PutMode::Replace,
        )
        .unwrap();
        assert!(s
            .put_secret("w", "repo/type/tag", b"resource-secret")
            .unwrap());
        assert_eq!(
            s.secret("w", KEY_SECRET).unwrap().unwrap().as_slice(),
            b"luks-passphrase"
        );
        assert_eq!(s.check_sealed().unwrap(), 0);
        drop(s);
        let raw = std::fs::read(&path).unwrap();
        for plain in [&b"luks-passphrase"[..], b"resource-secret"] {
            assert!(!raw.windows(plain.len()).any(|w| w == plain));
        }
        // A sealed value moved to another row does not open.
        {
            let c = Connection::open(&path).unwrap();
            c.execute_batch(
                "UPDATE secrets SET data = (SELECT data FROM secrets WHERE name = 'key')
                 WHERE name = 'repo/type/tag'",
            )
            .unwrap();
        }
        let s = Store::open(&path).unwrap().with_secrets_key(key());
        let moved = s.secret("w", "repo/type/tag").unwrap_err();
        assert!(crate::error_chain(&moved).contains("moved from another row"));
        assert!(s
            .put_secret("w", "repo/type/tag", b"resource-secret")
            .unwrap());
        // Another key, or none: a clear error, at the check and at the read.
        let wrong = Store::open(&path)
            .unwrap()
            .with_secrets_key(SecretsKey::new([2; 32]));
        let err = crate::error_chain(&wrong.check_sealed().unwrap_err());
        assert!(
            err.contains(&key().id()) && err.contains("--secrets-key-file"),
            "{err}"
        );
        assert!(wrong.secret("w", KEY_SECRET).is_err());
        let none = Store::open(&path).unwrap();
        let err = crate::error_chain(&none.check_sealed().unwrap_err());
        assert!(err.contains("no --secrets-key-file"), "{err}");

        // Rotation: everything re-sealed under the new key, in one step.
        let new = SecretsKey::new([3; 32]);
        assert!(
            none.rotate_secrets(None, Some(&new)).is_err(),
            "sealed values need the old key"
        );
        assert_eq!(none.rotate_secrets(Some(&key()), Some(&new)).unwrap(), 2);
        let s = Store::open(&path).unwrap().with_secrets_key(new);
        assert_eq!(s.check_sealed().unwrap(), 0);
        assert_eq!(
            s.secret("w", KEY_SECRET).unwrap().unwrap().as_slice(),
            b"luks-passphrase"
        );
    }

    #[test]
    fn plaintext_values_are_read_and_sealed_by_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kbs.db");
        let s = Store::open(&path).unwrap();
        s.put_workload(&workload("w", TeeKind::Snp), &[vec![1; 48]])
            .unwrap();
        assert!(s.put_secret("w", KEY_SECRET, b"old-plaintext").unwrap());
        let key = SecretsKey::new([4; 32]);
        let s = Store::open(&path).unwrap().with_secrets_key(key);
        assert_eq!(s.check_sealed().unwrap(), 1, "one value still unsealed");
        assert_eq!(
            s.secret("w", KEY_SECRET).unwrap().unwrap().as_slice(),
            b"old-plaintext"
        );
        let key = SecretsKey::new([4; 32]);
        assert_eq!(s.rotate_secrets(None, Some(&key)).unwrap(), 1);
        assert_eq!(s.check_sealed().unwrap(), 0);
        assert_eq!(
            s.secret("w", KEY_SECRET).unwrap().unwrap().as_slice(),
            b"old-plaintext"
        );
    }

    #[test]
    fn a_failed_transaction_changes_nothing_and_the_next_one_runs() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("kbs.db")).unwrap();
        s.put_workload(&workload("w", TeeKind::Snp), &[vec![1; 48]])
            .unwrap();
        let failed: Result<(), DbError> = s.tx(|c| {
            c.execute("DELETE FROM workloads WHERE id = $1", &[Value::text("w")])?;
            Err(DbError::Shape("stop".into()))
        });
        assert!(failed.is_err());
        assert!(s.workload("w").unwrap().is_some(), "rolled back");
        // A failing statement inside a read transaction ends it too.
        assert!(s
            .read(|c| c.query("SELECT nope FROM workloads", &[]))
            .is_err());
        assert!(s.remove_workload("w").unwrap());
        assert!(s.workload("w").unwrap().is_none());
    }

    #[test]
    fn the_open_session_count_reads_the_open_sessions_index() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("kbs.db")).unwrap();
        let plan = s
            .read(|c| {
                c.query(
                    "EXPLAIN QUERY PLAN SELECT count(*) FROM sessions WHERE ended IS NULL",
                    &[],
                )
            })
            .unwrap();
        let text = format!("{plan:?}");
        assert!(text.contains("sessions_open"), "{text}");
    }

    #[test]
    fn a_database_newer_than_the_broker_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kbs.db");
        let s = Store::open(&path).unwrap();
        assert_eq!(s.schema_version().unwrap(), 3);
        drop(s);
        Connection::open(&path)
            .unwrap()
            .execute_batch("UPDATE schema_version SET version = 99")
            .unwrap();
        let err = Store::open(&path).unwrap_err();
        assert!(err.to_string().contains("upgrade the broker"), "{err}");
    }

    #[test]
    fn host_data_requirement_round_trips_and_old_rows_read() {
        let hex = "5a".repeat(32);
        let want: HostData = hex.parse().unwrap();
        assert_eq!(want, HostData([0x5a; 32]));
        assert!("5a".parse::<HostData>().is_err());
        assert!("zz".repeat(32).parse::<HostData>().is_err());
        let req = SnpRequirements {
            host_data: Some(want),
            ..Default::default()
        };
        let json = serde_json::to_string(&req).unwrap();
        assert!(json.contains(&format!("\"host_data\":\"{hex}\"")), "{json}");
        assert_eq!(serde_json::from_str::<SnpRequirements>(&json).unwrap(), req);
        // Rows written before the field existed mean "any HOST_DATA".
        let old: SnpRequirements = serde_json::from_str(r#"{"max_vmpl":0}"#).unwrap();
        assert_eq!(old.host_data, None);
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("kbs.db")).unwrap();
        let mut w = workload("bound", TeeKind::Snp);
        w.snp = req;
        store.put_workload(&w, &[vec![1; 48]]).unwrap();
        assert_eq!(
            store.workload("bound").unwrap().unwrap().snp.host_data,
            Some(want)
        );
    }

    #[test]
    fn a_database_of_the_previous_schema_is_migrated() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.db");
        {
            let c = Connection::open(&path).unwrap();
            c.execute_batch(
                "CREATE TABLE workloads (id TEXT PRIMARY KEY, tee TEXT NOT NULL,
                     sev_policy INTEGER NOT NULL, snp TEXT NOT NULL);
                 INSERT INTO workloads VALUES ('old', 'snp', 63,
                     '{\"allow_debug\":false,\"allow_migration_agent\":false,
                       \"min_tcb\":{\"bootloader\":0,\"tee\":0,\"snp\":0,\"microcode\":0},
                       \"min_report_version\":2,\"max_vmpl\":0}');",
            )
            .unwrap();
        }
        let s = Store::open(&path).unwrap();
        let w = s.workload("old").unwrap().unwrap();
        // Old rows keep what they meant: an explicit 0:0:0:0, no SEV minimum of their own.
        assert_eq!(w.snp.min_tcb, Some(MinTcb::default()));
        assert_eq!(w.sev, SevRequirements::default());
        let mut new = workload("new", TeeKind::Sev);
        new.sev.min_fw = Some("1.55.21".parse().unwrap());
        s.put_workload(&new, &[vec![1; 32]]).unwrap();
        drop(s);
        // Opening again (already migrated) changes nothing.
        let s = Store::open(&path).unwrap();
        assert_eq!(s.workload("new").unwrap().unwrap().sev, new.sev);
        assert_eq!(s.workloads().unwrap().len(), 2);
    }

    #[test]
    fn existing_database_files_are_narrowed_to_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kbs.db");
        drop(Store::open(&path).unwrap());
        let wal = dir.path().join("kbs.db-wal");
        std::fs::write(&wal, b"").unwrap();
        for f in [&path, &wal] {
            std::fs::set_permissions(f, std::fs::Permissions::from_mode(0o644)).unwrap();
        }
        let s = Store::open(&path).unwrap();
        s.put_workload(&workload("a", TeeKind::Snp), &[vec![1; 48]])
            .unwrap();
        for f in [&path, &wal, &dir.path().join("kbs.db-shm")] {
            let mode = std::fs::metadata(f).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", f.display());
        }
    }

    #[test]
    fn create_only_registration_never_touches_an_existing_workload() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("kbs.db")).unwrap();
        let w = workload("x", TeeKind::Snp);
        assert!(s
            .register(&w, &[vec![1; 48]], Some(b"admin"), PutMode::Replace)
            .unwrap());
        let mut other = workload("x", TeeKind::Sev);
        other.sev_policy = 7;
        assert!(!s
            .register(&other, &[vec![2; 32]], Some(b"evil"), PutMode::CreateOnly)
            .unwrap());
        let kept = s.workload("x").unwrap().unwrap();
        assert_eq!(kept.tee, TeeKind::Snp);
        assert_eq!(kept.sev_policy, 5);
        assert_eq!(kept.measurements, vec![hex::encode([1u8; 48])]);
        assert_eq!(
            s.secret("x", KEY_SECRET).unwrap().unwrap().as_slice(),
            b"admin"
        );
        // A new id is created, with its key, in one step.
        assert!(s
            .register(
                &workload("y", TeeKind::Snp),
                &[vec![3; 48]],
                Some(b"y"),
                PutMode::CreateOnly
            )
            .unwrap());
        assert_eq!(s.secret("y", KEY_SECRET).unwrap().unwrap().as_slice(), b"y");
    }

    #[test]
    fn workloads_measurements_and_secrets_persist_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kbs.db");
        {
            let s = Store::open(&path).unwrap();
            s.put_workload(&workload("a", TeeKind::Snp), &[vec![1; 48], vec![2; 48]])
                .unwrap();
            s.put_workload(&workload("b", TeeKind::Sev), &[vec![1; 32]])
                .unwrap();
            assert!(s.put_secret("a", KEY_SECRET, b"pw").unwrap());
            assert!(!s.put_secret("nope", KEY_SECRET, b"pw").unwrap());
        }
        let s = Store::open(&path).unwrap();
        let a = s.workload("a").unwrap().unwrap();
        assert_eq!(a.tee, TeeKind::Snp);
        assert_eq!(
            a.measurements,
            vec![hex::encode([1u8; 48]), hex::encode([2u8; 48])]
        );
        assert_eq!(
            s.secret("a", KEY_SECRET).unwrap().unwrap().as_slice(),
            b"pw"
        );
        assert_eq!(
            s.workloads_with_measurement(TeeKind::Snp, &[2; 48])
                .unwrap(),
            vec!["a"]
        );
        assert!(s
            .workloads_with_measurement(TeeKind::Sev, &[2; 48])
            .unwrap()
            .is_empty());
        assert_eq!(s.workloads().unwrap().len(), 2);

        // Re-registration replaces measurements; removal cascades to secrets.
        s.put_workload(&workload("a", TeeKind::Snp), &[vec![3; 48]])
            .unwrap();
        assert!(s
            .workloads_with_measurement(TeeKind::Snp, &[1; 48])
            .unwrap()
            .is_empty());
        assert!(s.remove_workload("a").unwrap());
        assert!(s.secret("a", KEY_SECRET).unwrap().is_none());
        assert!(!s.remove_workload("a").unwrap());
    }
}
