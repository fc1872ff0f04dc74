//! A private Redis Cluster per test: 3 masters in cluster mode on free loopback ports in a
//! tempdir, joined with `redis-cli --cluster create`; killed on drop (also on a panic).
#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct RedisCluster {
    children: Vec<Child>,
    pub ports: Vec<u16>,
    _dir: tempfile::TempDir,
}

/// A free loopback port (the listener is dropped; the server binds it right after).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A free port whose cluster bus port (port + 10000, for servers older than 7.0, which have no
/// `--cluster-port`) is free too.
fn free_port_with_bus() -> u16 {
    loop {
        let p = free_port();
        if p < 55_000 && TcpListener::bind(("127.0.0.1", p + 10_000)).is_ok() {
            return p;
        }
    }
}

/// `redis-server --version` is 7 or newer.
fn has_cluster_port() -> bool {
    let out = Command::new("redis-server")
        .arg("--version")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    text.split("v=")
        .nth(1)
        .and_then(|v| v.split('.').next()?.parse::<u32>().ok())
        .is_some_and(|major| major >= 7)
}

fn installed(tool: &str) -> bool {
    Command::new(tool)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn cli(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .stderr(Stdio::null())
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

impl RedisCluster {
    /// Starts `masters` servers and makes them one cluster (no replicas), waiting until every
    /// node reports `cluster_state:ok`. `None` if `redis-server` or `redis-cli` is missing.
    pub fn start(masters: usize) -> Option<RedisCluster> {
        if !installed("redis-server") || !installed("redis-cli") {
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let mut cluster = RedisCluster {
            children: Vec::new(),
            ports: Vec::new(),
            _dir: dir,
        };
        let bus_option = has_cluster_port();
        for _ in 0..masters {
            let port = if bus_option {
                free_port()
            } else {
                free_port_with_bus()
            };
            let node_dir = root.join(port.to_string());
            std::fs::create_dir(&node_dir).unwrap();
            let mut cmd = Command::new("redis-server");
            cmd.args(["--bind", "127.0.0.1", "--port", &port.to_string()])
                .args(["--cluster-enabled", "yes"]);
            if bus_option {
                cmd.args(["--cluster-port", &free_port().to_string()]);
            }
            let child = cmd
                .args(["--cluster-config-file", "nodes.conf"])
                .args(["--save", "", "--appendonly", "no", "--dir"])
                .arg(&node_dir)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            cluster.children.push(child);
            cluster.ports.push(port);
        }
        for &port in &cluster.ports {
            cluster.wait(port, "PONG", &["PING"]);
        }
        let nodes: Vec<String> = cluster
            .ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        let status = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&nodes)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "redis-cli --cluster create failed");
        for &port in &cluster.ports {
            cluster.wait(port, "cluster_state:ok", &["CLUSTER", "INFO"]);
        }
        Some(cluster)
    }

    fn wait(&self, port: u16, want: &str, args: &[&str]) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if cli(port, args).contains(want) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("redis node {port} never answered {want} to {args:?}");
    }

    /// `redis://127.0.0.1:P` for every node.
    pub fn urls(&self) -> Vec<String> {
        self.ports
            .iter()
            .map(|p| format!("redis://127.0.0.1:{p}"))
            .collect()
    }

    /// `CLUSTER KEYSLOT key`, asked of the first node.
    pub fn slot(&self, key: &str) -> u16 {
        cli(self.ports[0], &["CLUSTER", "KEYSLOT", key])
            .trim()
            .parse()
            .unwrap()
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
