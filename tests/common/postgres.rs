//! A throwaway PostgreSQL server for tests: its own data directory in a
//! temporary directory, listening on an ephemeral loopback port, run as the
//! `postgres` user when the tests run as root (PostgreSQL refuses root).
//! It can be crashed and restarted; it is stopped when dropped.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Postgres {
    _tmp: tempfile::TempDir,
    data: PathBuf,
    bin: PathBuf,
    pub port: u16,
    child: Option<Child>,
    user: Option<(u32, u32)>,
}

/// The server binaries of the installed PostgreSQL (Debian's `postgresql` package).
fn bin_dir() -> PathBuf {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL is not installed (apt-get install postgresql)")
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|p| p.join("postgres").exists())
        .collect();
    versions.sort();
    versions.pop().expect("no PostgreSQL server binaries under /usr/lib/postgresql")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

impl Postgres {
    pub fn start() -> Postgres {
        let tmp = tempfile::tempdir().expect("tempdir");
        let data = tmp.path().join("data");
        let user = nix::unistd::geteuid().is_root().then(|| {
            let u = nix::unistd::User::from_name("postgres").expect("user lookup").expect("a postgres user");
            (u.uid.as_raw(), u.gid.as_raw())
        });
        if let Some((uid, gid)) = user {
            nix::unistd::chown(tmp.path(), Some(uid.into()), Some(gid.into())).expect("chown");
        }
        let bin = bin_dir();
        let mut initdb = Command::new(bin.join("initdb"));
        initdb.args(["--auth=trust", "--username=postgres", "--no-instructions", "-D"]).arg(&data);
        let out = as_user(&mut initdb, user).output().expect("initdb");
        assert!(out.status.success(), "initdb failed: {}", String::from_utf8_lossy(&out.stderr));
        let mut pg = Postgres { _tmp: tmp, data, bin, port: free_port(), child: None, user };
        pg.spawn();
        pg
    }

    pub fn conn(&self) -> String {
        format!("host=127.0.0.1 port={} user=postgres dbname=postgres connect_timeout=2", self.port)
    }

    fn spawn(&mut self) {
        let mut cmd = Command::new(self.bin.join("postgres"));
        cmd.arg("-D")
            .arg(&self.data)
            .args(["-p", &self.port.to_string(), "-c", "listen_addresses=127.0.0.1", "-c", "fsync=on"])
            .arg("-k")
            .arg(self.data.parent().unwrap_or(Path::new("/tmp")))
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        self.child = Some(as_user(&mut cmd, self.user).spawn().expect("start postgres"));
        // Listening is not ready: it refuses sessions until recovery is done.
        let deadline = Instant::now() + Duration::from_secs(30);
        let ready = || {
            Command::new(self.bin.join("pg_isready"))
                .args(["-q", "-h", "127.0.0.1", "-p", &self.port.to_string()])
                .status()
                .is_ok_and(|s| s.success())
        };
        while !ready() {
            assert!(Instant::now() < deadline, "postgres was not ready within 30 s");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// An immediate shutdown (SIGQUIT: no checkpoint, crash recovery at the next
    /// start), as a crash of the database server would be; then it starts again.
    pub fn crash_and_restart(&mut self) {
        self.stop(nix::sys::signal::Signal::SIGQUIT);
        self.spawn();
    }

    fn stop(&mut self, signal: nix::sys::signal::Signal) {
        if let Some(mut c) = self.child.take() {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(c.id() as i32), signal);
            let _ = c.wait();
        }
    }
}

fn as_user(cmd: &mut Command, user: Option<(u32, u32)>) -> &mut Command {
    if let Some((uid, gid)) = user {
        cmd.uid(uid).gid(gid);
    }
    cmd
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.stop(nix::sys::signal::Signal::SIGTERM);
    }
}
