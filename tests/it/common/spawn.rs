//! Spawns the real `shardbox serve` binary on 127.0.0.1:0 and learns its address from the JSON
//! log line it writes when it listens. Shared by the crash tests and the benchmark suite.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};

/// Starts `shardbox serve --data dir` with extra environment settings (`SHARDBOX_*`).
pub fn spawn_shardbox(dir: &Path, env: &[(String, String)]) -> Result<(Child, SocketAddr), String> {
    spawn_shardbox_bin(Path::new(env!("CARGO_BIN_EXE_shardbox")), dir, env)
}

/// As [`spawn_shardbox`], running the binary at `bin`.
pub fn spawn_shardbox_bin(
    bin: &Path,
    dir: &Path,
    env: &[(String, String)],
) -> Result<(Child, SocketAddr), String> {
    spawn_shardbox_as(bin, "serve", dir, env)
}

/// As [`spawn_shardbox`], with another command that serves (`follow`).
#[allow(dead_code)] // the bench suite shares this file and does not use it
pub fn spawn_shardbox_cmd(
    command: &str,
    dir: &Path,
    env: &[(String, String)],
) -> Result<(Child, SocketAddr), String> {
    spawn_shardbox_as(Path::new(env!("CARGO_BIN_EXE_shardbox")), command, dir, env)
}

fn spawn_shardbox_as(
    bin: &Path,
    command: &str,
    dir: &Path,
    env: &[(String, String)],
) -> Result<(Child, SocketAddr), String> {
    let mut cmd = Command::new(bin);
    cmd.args([
        command,
        "--listen",
        "127.0.0.1:0",
        "--log-format",
        "json",
        "--data",
    ])
    .arg(dir)
    .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
    .stdout(Stdio::null())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| format!("spawn shardbox: {e}"))?;
    let stderr = child.stderr.take().ok_or("no stderr")?;
    let mut lines = BufReader::new(stderr).lines();
    let show = std::env::var_os("SPAWN_LOG").is_some();
    let mut said = std::collections::VecDeque::new();
    let addr: SocketAddr = loop {
        let Some(line) = lines.next() else {
            let _ = child.wait();
            // What it said on its way out (the last lines) tells why.
            let tail = Vec::from(said).join("\n");
            return Err(format!("shardbox exited before listening:\n{tail}"));
        };
        let line = line.map_err(|e| e.to_string())?;
        if show {
            eprintln!("[starting] {line}");
        }
        if said.len() == 5 {
            said.pop_front();
        }
        said.push_back(line.clone());
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        if let Some(a) = v["fields"]["address"].as_str() {
            break a.parse().map_err(|e| format!("bad address {a}: {e}"))?;
        }
    };
    // Keep draining stderr so the server never blocks on a full pipe; `SPAWN_LOG=1` shows
    // what the servers a test starts say.
    let port = addr.port();
    std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            if show {
                eprintln!("[{port}] {line}");
            }
        }
    });
    Ok((child, addr))
}

/// A spawned server that is killed when dropped, so a failing test (a panic unwinds) leaves no
/// server behind.
#[allow(dead_code)] // the bench suite shares this file and does not use it
pub struct KillOnDrop(pub Child);

impl std::ops::Deref for KillOnDrop {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for KillOnDrop {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
