//! The access log: one line per answered request — time, request id, caller, client, method,
//! route, path, status, bytes, duration — as JSON or the Common Log Format, to standard output
//! or a file. Off by default; off, a request pays one `Option` check.
//!
//! Requests hand their line to a writer thread through a bounded queue
//! ([`ACCESS_LOG_QUEUE_MAX`] lines) that the thread empties every 20 ms: a slow disk or a
//! blocked stdout makes the log drop lines (counted in `shardbox_access_log_dropped_total`),
//! never a request wait.

use crate::base::config::AccessLogFormat;
use std::io::Write;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// Lines waiting for the writer thread at most.
pub const ACCESS_LOG_QUEUE_MAX: usize = 8192;

/// Lines dropped because the writer was behind.
pub static DROPPED: AtomicU64 = AtomicU64::new(0);

/// What one line says.
pub struct Entry<'a> {
    pub id: &'a [u8],
    pub caller: Option<&'a str>,
    pub ip: Option<IpAddr>,
    pub method: &'a str,
    /// The matched route's template (`-` for none).
    pub route: &'a str,
    pub path: &'a str,
    pub status: u16,
    /// Body bytes, when known before it is sent (not for a stream).
    pub bytes: Option<u64>,
    /// From the request's head to its response's head.
    pub took: Duration,
}

pub struct AccessLog {
    format: AccessLogFormat,
    tx: flume::Sender<String>,
    /// The writer's answer to [`AccessLog::sync`].
    synced: flume::Receiver<()>,
}

/// The line that asks the writer to flush and answer (a real line is never empty).
const SYNC: &str = "";

impl AccessLog {
    /// Opens the log `to` (`-` for standard output, else a file appended to, owner-only) and
    /// starts its writer thread; `None` when `to` is empty.
    pub fn open(to: &str, format: AccessLogFormat) -> std::io::Result<Option<Arc<AccessLog>>> {
        if to.is_empty() {
            return Ok(None);
        }
        let out: Box<dyn Write + Send> = if to == "-" {
            Box::new(std::io::stdout())
        } else {
            Box::new(
                crate::engine::private::file_options()
                    .append(true)
                    .create(true)
                    .open(to)
                    .map_err(|e| std::io::Error::new(e.kind(), format!("access_log {to}: {e}")))?,
            )
        };
        let (tx, rx) = flume::bounded::<String>(ACCESS_LOG_QUEUE_MAX);
        let (synced_tx, synced) = flume::bounded(1);
        std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || write_lines(rx, out, synced_tx))?;
        Ok(Some(Arc::new(AccessLog { format, tx, synced })))
    }

    /// Queues one line; dropped (and counted) when the writer is behind.
    pub fn record(&self, e: &Entry<'_>) {
        let line = match self.format {
            AccessLogFormat::Json => json_line(e, SystemTime::now()),
            AccessLogFormat::Common => common_line(e, SystemTime::now()),
        };
        if self.tx.try_send(line).is_err() {
            DROPPED.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Writes out every line queued so far, waiting up to `wait` (the server calls it when it
    /// stops, so the last requests' lines are not lost with the process).
    pub fn sync(&self, wait: Duration) {
        while self.synced.try_recv().is_ok() {}
        if self.tx.send_timeout(SYNC.to_string(), wait).is_ok() {
            let _ = self.synced.recv_timeout(wait);
        }
    }
}

/// How often the writer wakes to write out what was queued: requests never wake it (a send to
/// a queue nobody blocks on is no system call), and 20 ms of lines at this queue's bound is
/// 400,000 requests/s.
const WRITE_EVERY: Duration = Duration::from_millis(20);

/// The writer thread: every [`WRITE_EVERY`] it takes what is queued into a 64 KiB buffer and
/// writes it out; it ends (flushing) when the server's log is dropped.
fn write_lines(rx: flume::Receiver<String>, out: Box<dyn Write + Send>, synced: flume::Sender<()>) {
    let mut out = std::io::BufWriter::with_capacity(64 << 10, out);
    loop {
        std::thread::sleep(WRITE_EVERY);
        let mut sync = false;
        loop {
            match rx.try_recv() {
                Ok(line) if line == SYNC => sync = true,
                Ok(line) => {
                    let _ = out.write_all(line.as_bytes());
                }
                Err(flume::TryRecvError::Empty) => break,
                Err(flume::TryRecvError::Disconnected) => {
                    let _ = out.flush();
                    return;
                }
            }
        }
        let _ = out.flush();
        if sync {
            let _ = synced.try_send(());
        }
    }
}

/// One JSON object, written directly (no intermediate `serde_json::Value`); strings that come
/// from the client are escaped by serde_json.
fn json_line(e: &Entry<'_>, now: SystemTime) -> String {
    use std::fmt::Write as _;
    let s = |v: &str| serde_json::to_string(v).unwrap_or_else(|_| "null".into());
    let mut out = String::with_capacity(256 + e.path.len());
    let _ = writeln!(
        out,
        "{{\"time\":\"{}\",\"id\":{},\"caller\":{},\"ip\":{},\"method\":{},\"route\":{},\"path\":{},\"status\":{},\"bytes\":{},\"duration_ms\":{}}}",
        crate::base::util::rfc3339_ms(now),
        s(&String::from_utf8_lossy(e.id)),
        e.caller.map_or_else(|| "null".into(), s),
        e.ip.map_or_else(|| "null".into(), |ip| format!("\"{ip}\"")),
        s(e.method),
        s(e.route),
        s(e.path),
        e.status,
        e.bytes.map_or_else(|| "null".into(), |b| b.to_string()),
        (e.took.as_secs_f64() * 1e6).round() / 1e3,
    );
    out
}

fn common_line(e: &Entry<'_>, now: SystemTime) -> String {
    let when = httpdate_clf(now);
    // The request line is quoted: a quote or control character in the path is escaped.
    let path: String = e
        .path
        .chars()
        .flat_map(|c| match c {
            '"' | '\\' => vec!['\\', c],
            c if c.is_control() => format!("\\x{:02x}", c as u32).chars().collect(),
            c => vec![c],
        })
        .collect();
    format!(
        "{} - {} [{when}] \"{} {path} HTTP/1.1\" {} {} id={} {:.3}ms\n",
        e.ip.map_or_else(|| "-".to_string(), |ip| ip.to_string()),
        e.caller.unwrap_or("-"),
        e.method,
        e.status,
        e.bytes.map_or_else(|| "-".to_string(), |b| b.to_string()),
        String::from_utf8_lossy(e.id),
        e.took.as_secs_f64() * 1e3,
    )
}

/// `04/Dec/2026:21:33:48 +0000`, the Common Log Format's time (UTC).
fn httpdate_clf(now: SystemTime) -> String {
    // RFC 3339 `2026-12-04T21:33:48.123Z` re-cut into the CLF order.
    let t = crate::base::util::rfc3339_ms(now);
    let month = |m: &str| match m {
        "01" => "Jan",
        "02" => "Feb",
        "03" => "Mar",
        "04" => "Apr",
        "05" => "May",
        "06" => "Jun",
        "07" => "Jul",
        "08" => "Aug",
        "09" => "Sep",
        "10" => "Oct",
        "11" => "Nov",
        _ => "Dec",
    };
    match (t.get(0..4), t.get(5..7), t.get(8..10), t.get(11..19)) {
        (Some(y), Some(m), Some(d), Some(hms)) => format!("{d}/{}/{y}:{hms} +0000", month(m)),
        _ => t,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> Entry<'static> {
        Entry {
            id: b"abc",
            caller: Some("ops"),
            ip: Some("127.0.0.1".parse().unwrap()),
            method: "GET",
            route: "/v1/kv/{ns}/{key}",
            path: "/v1/kv/app/a\"b",
            status: 404,
            bytes: Some(77),
            took: Duration::from_micros(1234),
        }
    }

    #[test]
    fn both_formats_say_everything() {
        let at = SystemTime::UNIX_EPOCH + Duration::from_millis(1_796_420_028_123);
        let j: serde_json::Value = serde_json::from_str(&json_line(&entry(), at)).unwrap();
        assert_eq!(j["time"], "2026-12-04T21:33:48.123Z");
        assert_eq!(j["route"], "/v1/kv/{ns}/{key}");
        assert_eq!(
            (j["status"].as_u64(), j["bytes"].as_u64()),
            (Some(404), Some(77))
        );
        assert_eq!(j["caller"], "ops");
        assert_eq!(j["duration_ms"], 1.234);
        assert_eq!(
            common_line(&entry(), at),
            "127.0.0.1 - ops [04/Dec/2026:21:33:48 +0000] \"GET /v1/kv/app/a\\\"b HTTP/1.1\" 404 77 id=abc 1.234ms\n"
        );
    }
}
