//! A private `redis-server` on a free loopback port, that a test may kill and restart on the
//! same port with its data (an fsync-always append-only file), and the services-required
//! switch. Shared by the dead-letter store tests and (through `#[path]`) the job tests.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// `true` when CI demands real services (`RAMPART_REQUIRE_SERVICES=1`).
pub fn required() -> bool {
    std::env::var("RAMPART_REQUIRE_SERVICES").is_ok_and(|v| v == "1")
}

/// Skips (or, when services are required, fails) a test whose server is missing.
pub fn skip(what: &str) {
    if required() {
        panic!("RAMPART_REQUIRE_SERVICES=1 but {what}");
    }
    eprintln!("SKIPPED: {what}");
}

pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
    dir: tempfile::TempDir,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl RedisServer {
    /// Starts a private server with an fsync-always append-only file, so that a restart
    /// keeps every acknowledged write. `None` if `redis-server` is not installed.
    pub fn start() -> Option<RedisServer> {
        let dir = tempfile::tempdir().unwrap();
        let mut s = RedisServer {
            child: None,
            port: free_port(),
            dir,
        };
        if !s.spawn() {
            return None;
        }
        Some(s)
    }

    fn spawn(&mut self) -> bool {
        let child = Command::new("redis-server")
            .args([
                "--bind",
                "127.0.0.1",
                "--port",
                &self.port.to_string(),
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--dir",
            ])
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        let Ok(child) = child else { return false };
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.ping() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("redis-server on port {} did not answer PING", self.port);
    }

    pub fn ping(&self) -> bool {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
        if s.write_all(b"PING\r\n").is_err() {
            return false;
        }
        let mut buf = [0u8; 7];
        s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// SIGKILL: no shutdown, no final save.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the server again on the same port and directory (it replays its AOF).
    pub fn restart(&mut self) {
        self.kill();
        assert!(self.spawn(), "redis-server restarts");
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}
