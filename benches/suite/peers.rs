//! Starting and stopping the systems under test, each on 127.0.0.1 with its own temp dir.

#[path = "../../tests/it/common/spawn.rs"]
mod spawn;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A server process that is killed (and its data dir removed) when dropped.
pub struct Server {
    pub addr: SocketAddr,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Server {
    /// Kills the process with SIGKILL and waits for it (the directory stays until drop).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The server's own directory (shardbox's data dir is `data/` inside it).
    pub fn dir(&self) -> &Path {
        self._dir.path()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // SIGTERM for a clean stop, then make sure.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(10) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The process serving each address, so a measurement can read the server's CPU time.
static PIDS: std::sync::Mutex<Vec<(SocketAddr, u32)>> = std::sync::Mutex::new(Vec::new());

/// Notes that `pid` serves `addr` (a later server on the same address replaces it).
pub fn register(addr: SocketAddr, pid: u32) {
    let mut p = PIDS.lock().unwrap_or_else(|e| e.into_inner());
    p.retain(|(a, _)| *a != addr);
    p.push((addr, pid));
}

/// The process serving `addr`, if one of ours.
pub fn pid_of(addr: SocketAddr) -> Option<u32> {
    let p = PIDS.lock().unwrap_or_else(|e| e.into_inner());
    p.iter().find(|(a, _)| *a == addr).map(|(_, pid)| *pid)
}

/// User + system CPU time of process `pid` (all its threads) so far.
pub fn cpu_time(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) in parentheses.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    // utime and stime are fields 14 and 15 of the line: 12 and 13 after the name.
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let hz = if hz > 0 { hz as u64 } else { 100 };
    Some(Duration::from_micros(ticks * 1_000_000 / hz))
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(17070)
}

fn wait_for_port(addr: SocketAddr) -> bool {
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(20) {
        if TcpStream::connect(addr).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// Starts shardbox with extra settings (as `SHARDBOX_*` variables).
/// Spawns a peer on `port`, waits until it accepts connections.
fn serve(
    cmd: &mut Command,
    port: u16,
    dir: tempfile::TempDir,
    name: &str,
) -> Result<Server, String> {
    let child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("spawn {name}: {e}"))?;
    let addr: SocketAddr = format!("127.0.0.1:{port}")
        .parse()
        .map_err(|e| format!("{e}"))?;
    register(addr, child.id());
    let server = Server {
        addr,
        child,
        _dir: dir,
    };
    if !wait_for_port(addr) {
        return Err(format!("{name} did not start"));
    }
    Ok(server)
}

/// Starts the HTTP ceiling ([`crate::ceiling`]): this binary, serving 100 fixed bytes.
pub fn ceiling() -> Result<Server, String> {
    ceiling_shaped(false)
}

/// The HTTP ceiling on a current-thread runtime per core (`per_core`), or the default
/// multi-thread runtime.
pub fn ceiling_shaped(per_core: bool) -> Result<Server, String> {
    let port = free_port();
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut cmd = Command::new(exe);
    cmd.args(["--ceiling-server", &port.to_string()]);
    if per_core {
        cmd.arg("--per-core");
    }
    serve(&mut cmd, port, dir, "the HTTP ceiling")
}

/// Starts shardbox (the binary at `bin`, or this build's) with `SHARDBOX_*` settings.
pub fn shardbox(bin: Option<&Path>, settings: &[(&str, &str)]) -> Result<Server, String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let (child, addr) = spawn_in(bin, &dir.path().join("data"), settings)?;
    register(addr, child.id());
    Ok(Server {
        addr,
        child,
        _dir: dir,
    })
}

/// Starts this build's shardbox with `command` (`serve`, `follow`) on the data directory
/// `data` (kept by the caller) with `SHARDBOX_*` settings.
pub fn shardbox_cmd(
    command: &str,
    data: &Path,
    settings: &[(&str, &str)],
) -> Result<Server, String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let (child, addr) = spawn::spawn_shardbox_cmd(command, data, &env_of(settings))?;
    register(addr, child.id());
    Ok(Server {
        addr,
        child,
        _dir: dir,
    })
}

/// `(name, value)` settings as `SHARDBOX_NAME` variables.
fn env_of(settings: &[(&str, &str)]) -> Vec<(String, String)> {
    settings
        .iter()
        .map(|(k, v)| {
            (
                format!("SHARDBOX_{}", k.to_ascii_uppercase()),
                v.to_string(),
            )
        })
        .collect()
}

/// Spawns shardbox (the binary at `bin`, or this build's) on `data` with `SHARDBOX_*` settings.
fn spawn_in(
    bin: Option<&Path>,
    data: &Path,
    settings: &[(&str, &str)],
) -> Result<(std::process::Child, std::net::SocketAddr), String> {
    let env = env_of(settings);
    match bin {
        Some(b) => spawn::spawn_shardbox_bin(b, data, &env),
        None => spawn::spawn_shardbox(data, &env),
    }
}

/// Finds a peer binary, installing its Debian package when missing and allowed.
pub fn find_or_install(binary: &str, package: &str, allow_install: bool) -> Option<PathBuf> {
    let which = |b: &str| -> Option<PathBuf> {
        for d in ["/usr/bin", "/usr/sbin", "/usr/local/bin", "/bin", "/sbin"] {
            let p = Path::new(d).join(b);
            if p.exists() {
                return Some(p);
            }
        }
        None
    };
    if let Some(p) = which(binary) {
        return Some(p);
    }
    if !allow_install || unsafe { libc::geteuid() } != 0 {
        return None;
    }
    eprintln!("installing {package} with apt-get …");
    let quiet = |c: &mut Command| {
        c.env("DEBIAN_FRONTEND", "noninteractive")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    };
    let _ = quiet(Command::new("apt-get").args(["update", "-qq"]));
    quiet(Command::new("apt-get").args(["install", "-y", "-qq", package]));
    which(binary)
}

/// Starts redis-server with append-only fsync on every write (`appendfsync always`).
pub fn redis(allow_install: bool) -> Result<Server, String> {
    let bin = find_or_install("redis-server", "redis-server", allow_install)
        .ok_or("redis-server not installed")?;
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let port = free_port();
    let mut cmd = Command::new(bin);
    cmd.args([
        "--bind",
        "127.0.0.1",
        "--port",
        &port.to_string(),
        "--appendonly",
        "yes",
        "--appendfsync",
        "always",
        "--save",
        "",
        "--daemonize",
        "no",
        "--protected-mode",
        "yes",
        "--logfile",
        "",
    ])
    .arg("--dir")
    .arg(dir.path());
    serve(&mut cmd, port, dir, "redis-server")
}

/// Starts beanstalkd with a binlog fsync'd on every write (`-b DIR -f 0`).
pub fn beanstalkd(allow_install: bool) -> Result<Server, String> {
    let bin = find_or_install("beanstalkd", "beanstalkd", allow_install)
        .ok_or("beanstalkd not installed")?;
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let port = free_port();
    let mut cmd = Command::new(bin);
    cmd.args(["-l", "127.0.0.1", "-p", &port.to_string(), "-f", "0", "-b"])
        .arg(dir.path());
    serve(&mut cmd, port, dir, "beanstalkd")
}

/// Starts memcached on loopback with `memory_mb` of memory.
pub fn memcached(allow_install: bool, memory_mb: u64) -> Result<Server, String> {
    let bin = find_or_install("memcached", "memcached", allow_install)
        .ok_or("memcached not installed")?;
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let port = free_port();
    let mut cmd = Command::new(bin);
    cmd.args([
        "-l",
        "127.0.0.1",
        "-p",
        &port.to_string(),
        "-U",
        "0",
        "-m",
        &memory_mb.to_string(),
        "-c",
        "4096",
    ]);
    if unsafe { libc::geteuid() } == 0 {
        cmd.args(["-u", "root"]);
    }
    serve(&mut cmd, port, dir, "memcached")
}

impl Server {
    /// SIGKILLs shardbox and starts it again on the same data directory; returns the time from
    /// spawning the new process to it listening (open, repair, replay included).
    pub fn restart_shardbox(
        &mut self,
        bin: Option<&Path>,
        settings: &[(&str, &str)],
    ) -> Result<Duration, String> {
        self.kill();
        let t = Instant::now();
        let (child, addr) = spawn_in(bin, &self._dir.path().join("data"), settings)?;
        let took = t.elapsed();
        self.child = child;
        self.addr = addr;
        Ok(took)
    }
}
