//! A real PostgreSQL server for a test: Debian's `postgresql` binaries, a cluster made by
//! initdb in a temporary directory, listening on a free loopback port with its socket in
//! that directory, stopped when dropped (also when the test panics). As root (CI) the server
//! runs as the `postgres` user (PostgreSQL refuses to run as root).

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The directory of `initdb` and `pg_ctl`: the newest /usr/lib/postgresql/*/bin.
fn bin_dir() -> PathBuf {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            (bin.join("initdb").exists() && bin.join("pg_ctl").exists()).then_some((version, bin))
        })
        .collect();
    found.sort();
    match found.pop() {
        Some((_, bin)) => bin,
        None => panic!(
            "PostgreSQL server binaries (initdb, pg_ctl) not found under \
             /usr/lib/postgresql/*/bin: install the Debian package `postgresql` \
             (apt-get install -y postgresql; listed in ci/packages.txt)"
        ),
    }
}

/// Whether this process runs as root (the owner of /proc/self is the effective user).
fn is_root() -> bool {
    std::fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
}

/// A running server; stopped on drop.
pub struct Postgres {
    bin: PathBuf,
    data: PathBuf,
    /// Runs the server's commands as this user (when the test runs as root).
    user: Option<&'static str>,
    pub port: u16,
    dir: tempfile::TempDir,
}

impl Postgres {
    pub fn start() -> Postgres {
        let bin = bin_dir();
        let user = is_root().then_some("postgres");
        // As root the cluster lives under /tmp: the server's user must reach it, and a
        // $TMPDIR under /root would not let it (the socket path stays short too).
        let dir = match user {
            Some(_) => tempfile::tempdir_in("/tmp").unwrap(),
            None => tempfile::tempdir().unwrap(),
        };
        if let Some(u) = user {
            let out = Command::new("chown")
                .arg(format!("{u}:"))
                .arg(dir.path())
                .output()
                .unwrap();
            assert!(out.status.success(), "chown: {out:?}");
        }
        let data = dir.path().join("data");
        let mut pg = Postgres {
            bin,
            data,
            user,
            port: 0,
            dir,
        };
        let data = pg.data.display().to_string();
        pg.run(
            "initdb",
            &[
                "-D",
                &data,
                "-U",
                "kbs",
                "--auth=trust",
                "--encoding=UTF8",
                "--no-sync",
            ],
        );
        pg.port = free_port();
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200",
            pg.port,
            pg.dir.path().display()
        );
        let log = pg.dir.path().join("server.log").display().to_string();
        pg.run(
            "pg_ctl",
            &["-D", &data, "-o", &opts, "-l", &log, "-w", "start"],
        );
        pg
    }

    fn command(&self, tool: &str) -> Command {
        let path = self.bin.join(tool);
        match self.user {
            Some(u) => {
                let mut c = Command::new("runuser");
                c.args(["-u", u, "--"]).arg(path);
                c
            }
            None => Command::new(path),
        }
    }

    fn run(&self, tool: &str, args: &[&str]) -> Output {
        let out = self
            .command(tool)
            .args(args)
            .current_dir(self.dir.path())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {tool}: {e}"));
        assert!(
            out.status.success(),
            "{tool} failed: {}\n{}\nserver log:\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
        );
        out
    }

    /// The URL of database `name` (created by [`Postgres::create_database`] or `postgres`).
    pub fn url(&self, name: &str) -> String {
        format!("postgres://kbs@127.0.0.1:{}/{name}", self.port)
    }

    /// Creates an empty database.
    pub fn create_database(&self, name: &str) -> String {
        let mut c = postgres::Client::connect(&self.url("postgres"), postgres::NoTls).unwrap();
        c.batch_execute(&format!("CREATE DATABASE {name}")).unwrap();
        self.url(name)
    }

    /// One SQL query's rows, as the broker's store wrote them.
    pub fn query(&self, db: &str, sql: &str) -> Vec<postgres::Row> {
        let mut c = postgres::Client::connect(&self.url(db), postgres::NoTls).unwrap();
        c.query(sql, &[]).unwrap()
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        // Immediate: the cluster is thrown away with the directory.
        let data = self.data.display().to_string();
        let _ = self
            .command("pg_ctl")
            .args(["-D", &data, "-m", "immediate", "-w", "stop"])
            .output();
    }
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}
