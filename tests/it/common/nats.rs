//! A real nats-server cluster on loopback for the sink's tests: the pinned release installed by
//! `scripts/install-nats.sh`, three nodes with JetStream (`sync_interval: always`), temporary
//! store directories, nodes that can be killed (SIGKILL) and started again.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

/// The nats-server binary, installed once per test run; `None` when it cannot be (then
/// `REQUIRE_NATS`, set by CI, turns that into a failure).
pub fn nats_server() -> Option<PathBuf> {
    static BIN: OnceLock<Option<PathBuf>> = OnceLock::new();
    BIN.get_or_init(|| installed_tool("install-nats.sh", &[], "REQUIRE_NATS"))
        .clone()
}

/// nats-server 2.11.11, the last release before JetStream's atomic batches (the hub of the
/// sink's one-message-at-a-time path), installed beside the pinned one.
#[allow(dead_code)]
pub fn nats_server_before_batches() -> Option<PathBuf> {
    static BIN: OnceLock<Option<PathBuf>> = OnceLock::new();
    BIN.get_or_init(|| installed_tool("install-nats.sh", &["2.11.11"], "REQUIRE_NATS"))
        .clone()
}

/// A pinned tool of the tests, installed by `scripts/<script> <args>` (which prints its path);
/// `None` when it cannot be — then the variable `require` (set by CI) makes that a failure, not
/// a skip.
pub fn installed_tool(script: &str, args: &[&str], require: &str) -> Option<PathBuf> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("scripts")
        .join(script);
    let found = Command::new("bash")
        .arg(path)
        .args(args)
        .output()
        .ok()
        .and_then(|out| {
            if !out.status.success() {
                eprintln!("{script} failed: {}", String::from_utf8_lossy(&out.stderr));
                return None;
            }
            let bin = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
            bin.exists().then_some(bin)
        });
    assert!(
        found.is_some() || std::env::var_os(require).is_none(),
        "{require} is set and scripts/{script} could not install its tool"
    );
    found
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

pub struct Node {
    pub name: String,
    pub port: u16,
    config: PathBuf,
    child: Option<Child>,
}

/// A 3-node JetStream cluster.
pub struct Cluster {
    bin: PathBuf,
    pub nodes: Vec<Node>,
    _dir: tempfile::TempDir,
}

impl Cluster {
    /// Starts `n` nodes and waits until JetStream answers through every one.
    pub async fn start(n: usize) -> Option<Cluster> {
        Cluster::start_in(n, None).await
    }

    /// [`Cluster::start`] with the nodes' store directories under `parent` (the bench puts a
    /// hub that stands in for other hardware on tmpfs: its fsyncs do not queue behind the
    /// box's on the one disk).
    pub async fn start_in(n: usize, parent: Option<&std::path::Path>) -> Option<Cluster> {
        Some(Cluster::start_with(nats_server()?, n, parent).await)
    }

    /// [`Cluster::start_in`] with another nats-server binary; one node runs alone (no cluster
    /// block).
    pub async fn start_with(bin: PathBuf, n: usize, parent: Option<&std::path::Path>) -> Cluster {
        let dir = match parent {
            Some(p) => tempfile::tempdir_in(p),
            None => tempfile::tempdir(),
        }
        .expect("tempdir");
        let ports: Vec<(u16, u16)> = (0..n).map(|_| (free_port(), free_port())).collect();
        let mut nodes = Vec::new();
        for (i, (port, route)) in ports.iter().enumerate() {
            let name = format!("n{}", i + 1);
            let routes: Vec<String> = ports
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(_, (_, r))| format!("\"nats-route://127.0.0.1:{r}\""))
                .collect();
            let store = dir.path().join(&name);
            // sync_interval: always — JetStream's default fsyncs every 2 minutes, so an
            // acknowledged message could be lost by a power cut (nats-server#7564).
            let mut text = format!(
                "server_name: {name}\nlisten: 127.0.0.1:{port}\n\
                 jetstream {{\n  store_dir: \"{}\"\n  sync_interval: always\n}}\n",
                store.display(),
            );
            if n > 1 {
                text.push_str(&format!(
                    "cluster {{\n  name: shardbox-test\n  listen: 127.0.0.1:{route}\n  routes: [{}]\n}}\n",
                    routes.join(", ")
                ));
            }
            let config = dir.path().join(format!("{name}.conf"));
            std::fs::write(&config, text).expect("write nats config");
            nodes.push(Node {
                name,
                port: *port,
                config,
                child: None,
            });
        }
        let mut c = Cluster {
            bin,
            nodes,
            _dir: dir,
        };
        for i in 0..n {
            c.start_node(i);
        }
        c.wait_ready().await;
        c
    }

    pub fn urls(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|n| format!("nats://127.0.0.1:{}", n.port))
            .collect()
    }

    pub fn start_node(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        let child = Command::new(&self.bin)
            .arg("-c")
            .arg(&node.config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nats-server");
        node.child = Some(child);
    }

    /// SIGKILL.
    pub fn kill_node(&mut self, i: usize) {
        if let Some(mut c) = self.nodes[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The running nodes' process ids (the bench reads the hub's CPU time).
    #[allow(dead_code)]
    pub fn pids(&self) -> Vec<u32> {
        self.nodes
            .iter()
            .filter_map(|n| n.child.as_ref().map(|c| c.id()))
            .collect()
    }

    /// Puts every thread of every running node in Linux's `SCHED_IDLE` class (`chrt --idle`,
    /// threads made later inherit it): it runs only on CPU nothing else wants. The bench runs a
    /// hub so to stand in for one on other hardware.
    #[allow(dead_code)]
    pub fn run_idle(&self) -> bool {
        let pids = self.pids();
        !pids.is_empty()
            && pids.iter().all(|pid| {
                Command::new("chrt")
                    .args(["--all-tasks", "--idle", "-p", "0"])
                    .arg(pid.to_string())
                    .stdout(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success())
            })
    }

    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.name == name)
    }

    /// Waits until a JetStream request answers through every running node.
    pub async fn wait_ready(&self) {
        for n in self.nodes.iter().filter(|n| n.child.is_some()) {
            let url = format!("nats://127.0.0.1:{}", n.port);
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            loop {
                let ok = async {
                    let client = async_nats::connect(&url).await.ok()?;
                    let js = async_nats::jetstream::new(client);
                    js.query_account().await.ok()
                };
                if tokio::time::timeout(Duration::from_secs(3), ok)
                    .await
                    .ok()
                    .flatten()
                    .is_some()
                {
                    break;
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "nats node {} not ready in 30 s",
                    n.name
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }

    /// A JetStream context through the cluster.
    pub async fn jetstream(&self) -> async_nats::jetstream::Context {
        let client = async_nats::ConnectOptions::new()
            .connection_timeout(Duration::from_secs(5))
            .request_timeout(Some(Duration::from_secs(10)))
            .connect(self.urls())
            .await
            .expect("connect to the cluster");
        async_nats::jetstream::new(client)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill_node(i);
        }
    }
}
