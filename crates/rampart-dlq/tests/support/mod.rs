//! A private `redis-server` per test, on a free loopback port, that tests may kill and
//! restart; the services-required switch; the PostgreSQL URL; concurrent takers.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// `true` when CI demands real services (`RAMPART_REQUIRE_SERVICES=1`).
pub fn required() -> bool {
    std::env::var("RAMPART_REQUIRE_SERVICES").is_ok_and(|v| v == "1")
}

/// `DATABASE_URL`, or the local test server.
pub fn postgres_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

/// Empties the retry queue with `tasks` concurrent takers spread over `stores` in turn (7
/// records a take); every id taken, in no particular order.
pub async fn take_all_concurrently<S>(stores: &[S], tasks: usize) -> Vec<rampart_dlq::RecordId>
where
    S: rampart_dlq::DeadLetterStore + Clone,
{
    let mut takers = Vec::new();
    for s in stores.iter().cycle().take(tasks) {
        let s = s.clone();
        takers.push(tokio::spawn(async move {
            let mut got = Vec::new();
            loop {
                let batch = s.take_requeued(7).await.unwrap();
                if batch.is_empty() {
                    return got;
                }
                got.extend(batch.into_iter().map(|r| r.id));
            }
        }));
    }
    let mut taken = Vec::new();
    for t in takers {
        taken.extend(t.await.unwrap());
    }
    taken
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
