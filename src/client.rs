//! `shardbox kv|queue|events|cache|status`: the same binary as a client of a running server,
//! so a shell drives every domain without curl.
//!
//! Plain text by default (a value as stored, one job or key per line), the server's JSON with
//! `--json`. Exit codes a script can branch on ([`Exit`]): 0 done, 3 not found (or nothing to
//! claim), 4 a precondition or lease did not hold, 5 unavailable for now (retry later), 1 any
//! other refusal, 2 a usage or local error.

use bytes::Bytes;
use clap::{Args, Subcommand};
use http_body_util::{BodyExt, Full};
use percent_encoding::{utf8_percent_encode, AsciiSet, CONTROLS};
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

/// How a command ended, as the process's exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Ok = 0,
    Refused = 1,
    Local = 2,
    NotFound = 3,
    Precondition = 4,
    Unavailable = 5,
}

impl Exit {
    fn of_status(status: u16) -> Exit {
        match status {
            200..=299 => Exit::Ok,
            404 => Exit::NotFound,
            409 | 412 => Exit::Precondition,
            429 | 503 | 507 => Exit::Unavailable,
            _ => Exit::Refused,
        }
    }
}

/// A failure: what to print and the exit code.
struct Fail(Exit, String);

type Out = Result<Exit, Fail>;

/// Where the server is and how to reach it (every client command takes these).
#[derive(Args, Clone)]
pub struct Conn {
    /// The server's URL.
    #[arg(
        long,
        env = "SHARDBOX_SERVER",
        default_value = "http://127.0.0.1:7070",
        global = true
    )]
    server: String,
    /// A bearer token (rather SHARDBOX_TOKEN or --token-file: a flag shows in `ps`).
    #[arg(long, env = "SHARDBOX_TOKEN", hide_env_values = true, global = true)]
    token: Option<String>,
    /// A file holding the bearer token.
    #[arg(long, env = "SHARDBOX_TOKEN_FILE", global = true)]
    token_file: Option<PathBuf>,
    /// A CA certificate (PEM) to trust for an https:// server.
    #[arg(long, env = "SHARDBOX_CA", global = true)]
    ca: Option<PathBuf>,
    /// Print the server's JSON answers instead of plain text.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Args)]
pub struct KvArgs {
    #[command(flatten)]
    conn: Conn,
    #[command(subcommand)]
    cmd: KvCmd,
}

#[derive(Subcommand)]
enum KvCmd {
    /// Print a key's value as stored (exit 3 if absent).
    Get { ns: String, key: String },
    /// Store a value (`-` reads it from stdin); prints its revision.
    Put {
        ns: String,
        key: String,
        value: String,
        /// Expire after this long (`30s`, `5m`, `1h`).
        #[arg(long)]
        ttl: Option<String>,
        /// Only if the current revision is this (exit 4 if not).
        #[arg(long)]
        if_revision: Option<u64>,
        /// Only if the key does not exist yet (exit 4 if it does).
        #[arg(long)]
        create: bool,
        /// The value's content type.
        #[arg(long)]
        content_type: Option<String>,
    },
    /// Delete a key (exit 3 if absent).
    Del {
        ns: String,
        key: String,
        /// Only if the current revision is this (exit 4 if not).
        #[arg(long)]
        if_revision: Option<u64>,
    },
    /// List keys in byte order, one per line (a key holding a control character, or starting
    /// with a quote, as a JSON string).
    Ls {
        ns: String,
        #[arg(long, default_value = "")]
        prefix: String,
        /// At most this many keys.
        #[arg(long, default_value_t = 1000)]
        limit: usize,
    },
    /// Add to a counter atomically; prints the new value.
    Incr {
        ns: String,
        key: String,
        #[arg(long, default_value_t = 1, allow_negative_numbers = true)]
        by: i64,
        /// Sent as Idempotency-Key: a retry with the same key adds nothing more.
        #[arg(long)]
        idempotency_key: Option<String>,
    },
}

#[derive(Args)]
pub struct QueueArgs {
    #[command(flatten)]
    conn: Conn,
    #[command(subcommand)]
    cmd: QueueCmd,
}

#[derive(Subcommand)]
enum QueueCmd {
    /// Add a job (PAYLOAD is JSON, or else taken as a string; `-` reads stdin); prints its id.
    Enqueue {
        queue: String,
        payload: String,
        /// 0-9, 0 first.
        #[arg(long)]
        priority: Option<u8>,
        /// Ready after this long (`10s`).
        #[arg(long)]
        delay: Option<String>,
        #[arg(long)]
        max_attempts: Option<u32>,
        /// A second job with this key while the first is not done is the first.
        #[arg(long)]
        dedupe_key: Option<String>,
        /// Sent as Idempotency-Key: a retry with the same key and payload gets the first
        /// answer (the same job id) instead of a second job.
        #[arg(long)]
        idempotency_key: Option<String>,
    },
    /// Take ready jobs: one line each, `<id> <lease_token> <payload JSON>` (exit 3 if none).
    Claim {
        queue: String,
        #[arg(long, default_value_t = 1)]
        max: u32,
        /// How long the lease lasts (`30s`); the queue's default if left out.
        #[arg(long)]
        lease: Option<String>,
        /// Wait this long for a job (`20s`) when none is ready.
        #[arg(long)]
        wait: Option<String>,
    },
    /// Finish a claimed job (exit 4 if the lease is stale).
    Ack {
        queue: String,
        id: String,
        lease_token: String,
    },
    /// Give a claimed job back: retried after its backoff, or dead with --dead.
    Nack {
        queue: String,
        id: String,
        lease_token: String,
        #[arg(long)]
        error: Option<String>,
        /// Retry after this long instead of the backoff.
        #[arg(long)]
        delay: Option<String>,
        #[arg(long)]
        dead: bool,
    },
    /// Depths and totals of one queue, or of every queue (with --json: one line per page of
    /// up to 1,000 queues).
    Stats { queue: Option<String> },
}

#[derive(Args)]
pub struct EventsArgs {
    #[command(flatten)]
    conn: Conn,
    #[command(subcommand)]
    cmd: EventsCmd,
}

#[derive(Subcommand)]
enum EventsCmd {
    /// Append an event (DATA is JSON, or else taken as a string; `-` reads stdin); prints its id.
    Append {
        stream: String,
        data: String,
        #[arg(long = "type")]
        kind: Option<String>,
        /// Its time in ms since the epoch (now if left out).
        #[arg(long)]
        ts: Option<u64>,
        /// Sent as Idempotency-Key: a retry with the same key and data gets the first answer
        /// (the same event id) instead of a second event.
        #[arg(long)]
        idempotency_key: Option<String>,
    },
    /// Events in a time range, one line each: `<id> <ts> <type> <data JSON>`.
    Range {
        stream: String,
        /// From this time (ms since the epoch), included.
        #[arg(long)]
        from: Option<u64>,
        /// To this time, excluded.
        #[arg(long)]
        to: Option<u64>,
        #[arg(long = "type")]
        kind: Option<String>,
        /// `asc` or `desc`.
        #[arg(long)]
        order: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// Follow a stream: every new event as a line until interrupted (from --after if given).
    Tail {
        stream: String,
        /// Replay from after this event id (`0-0`: from the start).
        #[arg(long)]
        after: Option<String>,
    },
}

#[derive(Args)]
pub struct CacheArgs {
    #[command(flatten)]
    conn: Conn,
    #[command(subcommand)]
    cmd: CacheCmd,
}

#[derive(Subcommand)]
enum CacheCmd {
    /// Print a cached value (exit 3 on a miss).
    Get { ns: String, key: String },
    /// Cache a value (`-` reads stdin) for --ttl.
    Put {
        ns: String,
        key: String,
        value: String,
        #[arg(long)]
        ttl: Option<String>,
        /// A tag to purge it by (repeatable).
        #[arg(long = "tag")]
        tags: Vec<String>,
        #[arg(long)]
        content_type: Option<String>,
    },
    /// Make entries a miss: those with one of the --tag values, or --all of the namespace.
    Purge {
        ns: String,
        #[arg(long = "tag")]
        tags: Vec<String>,
        #[arg(long)]
        all: bool,
    },
}

#[derive(Args)]
pub struct StatusArgs {
    #[command(flatten)]
    conn: Conn,
}

/// What may stand for itself in a path segment: everything but these is percent-encoded (a
/// key's `/` stays, the API takes it).
const SEGMENT: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'%')
    .add(b'?')
    .add(b'<')
    .add(b'>')
    .add(b'`')
    .add(b'{')
    .add(b'}');
const NAME: &AsciiSet = &SEGMENT.add(b'/');
const QUERY: &AsciiSet = &NAME.add(b'&').add(b'=').add(b'+');

fn name(s: &str) -> String {
    utf8_percent_encode(s, NAME).to_string()
}
fn key(s: &str) -> String {
    utf8_percent_encode(s, SEGMENT).to_string()
}
fn q(s: &str) -> String {
    utf8_percent_encode(s, QUERY).to_string()
}

/// A value argument: `-` reads stdin.
fn value_arg(v: &str) -> Result<Vec<u8>, Fail> {
    if v != "-" {
        return Ok(v.as_bytes().to_vec());
    }
    let mut buf = Vec::new();
    std::io::stdin()
        .read_to_end(&mut buf)
        .map_err(|e| Fail(Exit::Local, format!("reading stdin: {e}")))?;
    Ok(buf)
}

/// A JSON argument, exactly as given if it is JSON (key order and number precision kept),
/// else the text as a JSON string.
fn json_arg(v: &str) -> Result<String, Fail> {
    let bytes = value_arg(v)?;
    let text = String::from_utf8(bytes)
        .map_err(|_| Fail(Exit::Local, "the payload is not UTF-8 text".into()))?;
    match serde_json::from_str::<&serde_json::value::RawValue>(text.trim()) {
        Ok(raw) => Ok(raw.get().to_string()),
        Err(_) => Ok(Value::String(text.trim_end_matches('\n').into()).to_string()),
    }
}

/// `fields` as a JSON object with `"<name>": <raw JSON>` first.
fn with_raw(name: &str, raw: &str, fields: Value) -> Vec<u8> {
    let rest = fields.to_string();
    let rest = rest.strip_prefix('{').unwrap_or("}");
    let sep = if rest == "}" { "" } else { "," };
    format!("{{\"{name}\":{raw}{sep}{rest}").into_bytes()
}

/// Writes one line to stdout; a reader that went away (`| head`) ends the command quietly.
fn emit(line: &str) -> Result<(), Fail> {
    let mut out = std::io::stdout().lock();
    match writeln!(out, "{line}").and_then(|_| out.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Err(Fail(Exit::Ok, String::new())),
        Err(e) => Err(Fail(Exit::Local, format!("stdout: {e}"))),
    }
}

/// A claim's answer, each payload as the server sent it.
#[derive(serde::Deserialize)]
struct Claimed<'a> {
    #[serde(borrow)]
    jobs: Vec<ClaimedJob<'a>>,
}
#[derive(serde::Deserialize)]
struct ClaimedJob<'a> {
    id: String,
    lease_token: String,
    #[serde(borrow)]
    payload: &'a serde_json::value::RawValue,
}

/// An event as a range or a follower answers it, its data as the server sent it.
#[derive(serde::Deserialize)]
struct Event<'a> {
    id: String,
    ts: u64,
    #[serde(rename = "type")]
    kind: Option<String>,
    #[serde(borrow)]
    data: &'a serde_json::value::RawValue,
}
#[derive(serde::Deserialize)]
struct Events<'a> {
    #[serde(borrow)]
    events: Vec<Event<'a>>,
}

/// The server's answer.
struct Answer {
    status: u16,
    headers: hyper::HeaderMap,
    body: Bytes,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
    /// A refusal as a failure: the server's own error code and message.
    fn fail(&self) -> Fail {
        let v = self.json();
        let code = v["error"]["code"].as_str().unwrap_or("error");
        let message = v["error"]["message"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| String::from_utf8_lossy(&self.body).trim().to_string());
        let retry = self
            .headers
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .map(|s| format!(" (retry after {s} s)"))
            .unwrap_or_default();
        Fail(
            Exit::of_status(self.status),
            format!("{} {code}: {message}{retry}", self.status),
        )
    }
    fn ok(self) -> Result<Answer, Fail> {
        if (200..300).contains(&self.status) {
            Ok(self)
        } else {
            Err(self.fail())
        }
    }
}

/// A connection to the server.
struct Client {
    tls: Option<tokio_rustls::TlsConnector>,
    host: String,
    port: u16,
    auth: Option<String>,
    json: bool,
    rt: tokio::runtime::Runtime,
}

/// A plain or TLS connection.
trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static> Io for T {}

impl Client {
    fn new(c: &Conn) -> Result<Client, Fail> {
        let local = |m: String| Fail(Exit::Local, m);
        let (tls, rest) = if let Some(r) = c.server.strip_prefix("https://") {
            (true, r)
        } else if let Some(r) = c.server.strip_prefix("http://") {
            (false, r)
        } else {
            return Err(local(format!(
                "--server {}: give http://host:port or https://host:port",
                c.server
            )));
        };
        let authority = rest.trim_end_matches('/');
        if authority.contains(['/', '@', '?', '#']) || authority.is_empty() {
            return Err(local(format!(
                "--server {}: give scheme://host:port only (no path, user or query)",
                c.server
            )));
        }
        let default_port = if tls { 443 } else { 80 };
        let bad_port = |p: &str| local(format!("--server {}: bad port {p}", c.server));
        // `[::1]:7070`, `[::1]`, `host:7070`, `host`.
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (h, after) = v6.split_once(']').ok_or_else(|| bad_port(authority))?;
            let port = match after.strip_prefix(':') {
                Some(p) => p.parse::<u16>().map_err(|_| bad_port(p))?,
                None if after.is_empty() => default_port,
                None => return Err(bad_port(after)),
            };
            (h.to_string(), port)
        } else {
            match authority.split_once(':') {
                Some((h, p)) => (h.to_string(), p.parse::<u16>().map_err(|_| bad_port(p))?),
                None => (authority.to_string(), default_port),
            }
        };
        let token = match (&c.token, &c.token_file) {
            (Some(t), _) => Some(t.trim().to_string()),
            (None, Some(f)) => Some(
                std::fs::read_to_string(f)
                    .map_err(|e| local(format!("--token-file {}: {e}", f.display())))?
                    .trim()
                    .to_string(),
            ),
            (None, None) => None,
        };
        let tls = if tls {
            let ca = c.ca.as_ref().ok_or_else(|| {
                local("an https:// server needs --ca FILE (or SHARDBOX_CA): the certificate (or its CA) to trust".into())
            })?;
            use rustls::pki_types::pem::PemObject;
            let mut roots = rustls::RootCertStore::empty();
            let certs = rustls::pki_types::CertificateDer::pem_file_iter(ca)
                .map_err(|e| local(format!("--ca {}: {e}", ca.display())))?;
            for cert in certs {
                let cert = cert.map_err(|e| local(format!("--ca {}: {e}", ca.display())))?;
                roots
                    .add(cert)
                    .map_err(|e| local(format!("--ca {}: {e}", ca.display())))?;
            }
            let config = rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .map_err(|e| local(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
            Some(tokio_rustls::TlsConnector::from(Arc::new(config)))
        } else {
            None
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| local(e.to_string()))?;
        Ok(Client {
            tls,
            host,
            port,
            auth: token.map(|t| format!("Bearer {t}")),
            json: c.json,
            rt,
        })
    }

    async fn connect(&self) -> Result<Box<dyn Io>, Fail> {
        let down = |e: std::io::Error| {
            Fail(
                Exit::Unavailable,
                format!("cannot reach {}:{}: {e}", self.host, self.port),
            )
        };
        let tcp = tokio::time::timeout(
            Duration::from_secs(10),
            tokio::net::TcpStream::connect((self.host.as_str(), self.port)),
        )
        .await
        .map_err(|_| down(std::io::ErrorKind::TimedOut.into()))?
        .map_err(down)?;
        let _ = tcp.set_nodelay(true);
        match &self.tls {
            None => Ok(Box::new(tcp)),
            Some(connector) => {
                let server = rustls::pki_types::ServerName::try_from(self.host.clone())
                    .map_err(|e| Fail(Exit::Local, format!("--server host: {e}")))?;
                let tls = connector.connect(server, tcp).await.map_err(|e| {
                    // A certificate the CA does not vouch for is a refusal; a dropped
                    // connection is not.
                    let code = if e.kind() == std::io::ErrorKind::InvalidData {
                        Exit::Refused
                    } else {
                        Exit::Unavailable
                    };
                    Fail(code, format!("TLS with {}: {e}", self.host))
                })?;
                Ok(Box::new(tls))
            }
        }
    }

    /// Sends one request and reads the whole answer.
    fn call(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, String)],
        body: Vec<u8>,
    ) -> Result<Answer, Fail> {
        self.rt.block_on(async {
            let resp = self.send(method, path, headers, body).await?;
            let status = resp.status().as_u16();
            let headers = resp.headers().clone();
            let body = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| Fail(Exit::Unavailable, format!("reading the answer: {e}")))?
                .to_bytes();
            Ok(Answer {
                status,
                headers,
                body,
            })
        })
    }

    async fn send(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, String)],
        body: Vec<u8>,
    ) -> Result<hyper::Response<hyper::body::Incoming>, Fail> {
        let io = self.connect().await?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(io))
                .await
                .map_err(|e| Fail(Exit::Unavailable, format!("HTTP: {e}")))?;
        tokio::spawn(conn);
        let mut req = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header(
                "host",
                if self.host.contains(':') {
                    format!("[{}]:{}", self.host, self.port)
                } else {
                    format!("{}:{}", self.host, self.port)
                },
            )
            .header(
                "user-agent",
                concat!("shardbox/", env!("CARGO_PKG_VERSION")),
            );
        if let Some(a) = &self.auth {
            req = req.header("authorization", a);
        }
        for (k, v) in headers {
            req = req.header(*k, v);
        }
        let req = req
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| Fail(Exit::Local, format!("the request: {e}")))?;
        sender
            .send_request(req)
            .await
            .map_err(|e| Fail(Exit::Unavailable, format!("HTTP: {e}")))
    }

    fn get(&self, path: &str) -> Result<Answer, Fail> {
        self.call("GET", path, &[], vec![])
    }

    fn post_json(&self, path: &str, body: Value) -> Result<Answer, Fail> {
        self.post_keyed(path, body.to_string().into_bytes(), None)
    }

    /// A JSON POST, with an `Idempotency-Key` when given one.
    fn post_keyed(&self, path: &str, body: Vec<u8>, key: Option<&str>) -> Result<Answer, Fail> {
        let mut headers = vec![("content-type", "application/json".to_string())];
        if let Some(k) = key {
            headers.push(("idempotency-key", k.to_string()));
        }
        self.call("POST", path, &headers, body)
    }

    /// Prints the server's JSON as it sent it (`--json`), or `plain` of it.
    fn print(&self, a: &Answer, plain: impl FnOnce(&Value) -> String) -> Out {
        let text = if self.json {
            String::from_utf8_lossy(&a.body).trim_end().to_string()
        } else {
            plain(&a.json())
        };
        if !text.is_empty() {
            emit(&text)?;
        }
        Ok(Exit::Ok)
    }
}

/// A key for a line of plain output: as it is, or as a JSON string when it holds a control
/// character (a newline would split it across lines) or starts with `"` (so a quoted line is
/// always one of those). `--json` gives every key exactly.
fn plain_key(k: &str) -> std::borrow::Cow<'_, str> {
    if k.starts_with('"') || k.chars().any(char::is_control) {
        std::borrow::Cow::Owned(Value::from(k).to_string())
    } else {
        std::borrow::Cow::Borrowed(k)
    }
}

/// Runs a client command: its exit code, the error printed to stderr.
fn finish(out: Out) -> ExitCode {
    match out {
        Ok(e) => ExitCode::from(e as u8),
        Err(Fail(code, message)) => {
            if !message.is_empty() {
                eprintln!("shardbox: {message}");
            }
            ExitCode::from(code as u8)
        }
    }
}

/// A value as stored; on a terminal, with a newline after it if it has none.
fn write_raw(bytes: &[u8]) -> Out {
    use std::io::IsTerminal;
    let mut out = std::io::stdout().lock();
    let newline = out.is_terminal() && !bytes.ends_with(b"\n");
    out.write_all(bytes)
        .and_then(|_| {
            if newline {
                out.write_all(b"\n")
            } else {
                Ok(())
            }
        })
        .and_then(|_| out.flush())
        .map_err(|e| Fail(Exit::Local, format!("stdout: {e}")))?;
    Ok(Exit::Ok)
}

/// `ETag: "7"` → 7.
fn revision(a: &Answer) -> Option<u64> {
    a.headers
        .get("etag")?
        .to_str()
        .ok()?
        .trim_matches('"')
        .parse()
        .ok()
}

pub fn kv(args: KvArgs) -> ExitCode {
    finish(Client::new(&args.conn).and_then(|c| kv_run(&c, args.cmd)))
}

fn kv_run(c: &Client, cmd: KvCmd) -> Out {
    match cmd {
        KvCmd::Get { ns, key: k } => {
            let a = c.get(&format!("/v1/kv/{}/{}", name(&ns), key(&k)))?;
            let a = a.ok()?;
            if c.json {
                let ct = a
                    .headers
                    .get("content-type")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("application/octet-stream");
                let mut v = json!({"namespace": ns, "key": k, "revision": revision(&a), "content_type": ct});
                match std::str::from_utf8(&a.body) {
                    Ok(s) => v["value"] = Value::from(s),
                    Err(_) => {
                        use base64::Engine;
                        v["value_b64"] =
                            Value::from(base64::engine::general_purpose::STANDARD.encode(&a.body))
                    }
                }
                emit(&v.to_string())?;
                Ok(Exit::Ok)
            } else {
                write_raw(&a.body)
            }
        }
        KvCmd::Put {
            ns,
            key: k,
            value,
            ttl,
            if_revision,
            create,
            content_type,
        } => {
            let body = value_arg(&value)?;
            let mut path = format!("/v1/kv/{}/{}", name(&ns), key(&k));
            if let Some(t) = ttl {
                path.push_str(&format!("?ttl={}", q(&t)));
            }
            let mut headers = vec![];
            if let Some(r) = if_revision {
                headers.push(("if-match", format!("\"{r}\"")));
            }
            if create {
                headers.push(("if-none-match", "*".to_string()));
            }
            if let Some(ct) = content_type {
                headers.push(("content-type", ct));
            }
            let a = c.call("PUT", &path, &headers, body)?.ok()?;
            c.print(&a, |v| format!("revision {}", v["revision"]))
        }
        KvCmd::Del {
            ns,
            key: k,
            if_revision,
        } => {
            let headers: Vec<(&str, String)> = if_revision
                .map(|r| ("if-match", format!("\"{r}\"")))
                .into_iter()
                .collect();
            c.call(
                "DELETE",
                &format!("/v1/kv/{}/{}", name(&ns), key(&k)),
                &headers,
                vec![],
            )?
            .ok()?;
            Ok(Exit::Ok)
        }
        KvCmd::Ls { ns, prefix, limit } => {
            let mut after: Option<String> = None;
            let mut left = limit;
            while left > 0 {
                let mut path = format!(
                    "/v1/kv/{}?prefix={}&limit={}",
                    name(&ns),
                    q(&prefix),
                    left.min(1000)
                );
                if let Some(a) = &after {
                    path.push_str(&format!("&after={}", q(a)));
                }
                let v = c.get(&path)?.ok()?.json();
                let keys = v["keys"].as_array().cloned().unwrap_or_default();
                for k in &keys {
                    if c.json {
                        emit(&k.to_string())?;
                    } else {
                        emit(&plain_key(k["key"].as_str().unwrap_or_default()))?;
                    }
                }
                left = left.saturating_sub(keys.len());
                match v["cursor"].as_str() {
                    Some(cur) if !keys.is_empty() && after.as_deref() != Some(cur) => {
                        after = Some(cur.to_string())
                    }
                    _ => break,
                }
            }
            Ok(Exit::Ok)
        }
        KvCmd::Incr {
            ns,
            key: k,
            by,
            idempotency_key,
        } => {
            let a = c
                .post_keyed(
                    &format!("/v1/kv/{}:incr", name(&ns)),
                    json!({"key": k, "by": by}).to_string().into_bytes(),
                    idempotency_key.as_deref(),
                )?
                .ok()?;
            c.print(&a, |v| v["value"].to_string())
        }
    }
}

pub fn queue(args: QueueArgs) -> ExitCode {
    finish(Client::new(&args.conn).and_then(|c| queue_run(&c, args.cmd)))
}

fn queue_run(c: &Client, cmd: QueueCmd) -> Out {
    match cmd {
        QueueCmd::Enqueue {
            queue,
            payload,
            priority,
            delay,
            max_attempts,
            dedupe_key,
            idempotency_key,
        } => {
            let payload = json_arg(&payload)?;
            let mut body = json!({});
            if let Some(p) = priority {
                body["priority"] = p.into();
            }
            if let Some(d) = delay {
                body["delay"] = d.into();
            }
            if let Some(m) = max_attempts {
                body["max_attempts"] = m.into();
            }
            if let Some(k) = dedupe_key {
                body["dedupe_key"] = k.into();
            }
            let a = c
                .post_keyed(
                    &format!("/v1/queues/{}/jobs", name(&queue)),
                    with_raw("payload", &payload, body),
                    idempotency_key.as_deref(),
                )?
                .ok()?;
            c.print(&a, |v| v["id"].as_str().unwrap_or_default().to_string())
        }
        QueueCmd::Claim {
            queue,
            max,
            lease,
            wait,
        } => {
            let mut body = json!({"max": max});
            if let Some(l) = lease {
                body["lease"] = l.into();
            }
            if let Some(w) = wait {
                body["wait"] = w.into();
            }
            let a = c
                .post_json(&format!("/v1/queues/{}/claim", name(&queue)), body)?
                .ok()?;
            let claimed: Claimed = serde_json::from_slice(&a.body).map_err(|e| {
                Fail(
                    Exit::Refused,
                    format!("an answer this client does not read: {e}"),
                )
            })?;
            if c.json {
                emit(String::from_utf8_lossy(&a.body).trim_end())?;
            } else {
                for j in &claimed.jobs {
                    emit(&format!("{} {} {}", j.id, j.lease_token, j.payload.get()))?;
                }
            }
            Ok(if claimed.jobs.is_empty() {
                Exit::NotFound
            } else {
                Exit::Ok
            })
        }
        QueueCmd::Ack {
            queue,
            id,
            lease_token,
        } => {
            c.post_json(
                &format!("/v1/queues/{}/jobs/{}/ack", name(&queue), name(&id)),
                json!({"lease_token": lease_token}),
            )?
            .ok()?;
            Ok(Exit::Ok)
        }
        QueueCmd::Nack {
            queue,
            id,
            lease_token,
            error,
            delay,
            dead,
        } => {
            let mut body = json!({"lease_token": lease_token});
            if let Some(e) = error {
                body["error"] = e.into();
            }
            if let Some(d) = delay {
                body["delay"] = d.into();
            }
            if dead {
                body["dead"] = true.into();
            }
            c.post_json(
                &format!("/v1/queues/{}/jobs/{}/nack", name(&queue), name(&id)),
                body,
            )?
            .ok()?;
            Ok(Exit::Ok)
        }
        QueueCmd::Stats { queue } => {
            let line = |s: &Value| {
                format!(
                    "{} ready={} delayed={} in_flight={} dead={} paused={} oldest_ready_age_ms={}",
                    s["name"].as_str().or(queue.as_deref()).unwrap_or("?"),
                    s["ready"],
                    s["delayed"],
                    s["in_flight"],
                    s["dead"],
                    s["paused"],
                    s["oldest_ready_age_ms"]
                )
            };
            if let Some(q) = &queue {
                let a = c.get(&format!("/v1/queues/{}", name(q)))?.ok()?;
                return c.print(&a, line);
            }
            // Every queue, a page (of at most 1,000) at a time: with --json, one line per page.
            let mut after: Option<String> = None;
            loop {
                let mut path = "/v1/queues?limit=1000".to_string();
                if let Some(a) = &after {
                    path.push_str(&format!("&after={}", q(a)));
                }
                let a = c.get(&path)?.ok()?;
                let v = a.json();
                let page = v["queues"].as_array().cloned().unwrap_or_default();
                c.print(&a, |_| page.iter().map(line).collect::<Vec<_>>().join("\n"))?;
                // A cursor that does not move would loop for ever: the listing ends there.
                match v["next"].as_str() {
                    Some(next) if !page.is_empty() && after.as_deref() != Some(next) => {
                        after = Some(next.to_string())
                    }
                    _ => return Ok(Exit::Ok),
                }
            }
        }
    }
}

pub fn events(args: EventsArgs) -> ExitCode {
    finish(Client::new(&args.conn).and_then(|c| events_run(&c, args.cmd)))
}

/// `<id> <ts> <type> <data JSON>` (`-` for no type).
fn event_line(e: &Event) -> String {
    format!(
        "{} {} {} {}",
        e.id,
        e.ts,
        e.kind.as_deref().unwrap_or("-"),
        e.data.get()
    )
}

fn events_run(c: &Client, cmd: EventsCmd) -> Out {
    match cmd {
        EventsCmd::Append {
            stream,
            data,
            kind,
            ts,
            idempotency_key,
        } => {
            let data = json_arg(&data)?;
            let mut body = json!({});
            if let Some(k) = kind {
                body["type"] = k.into();
            }
            if let Some(t) = ts {
                body["ts"] = t.into();
            }
            let a = c
                .post_keyed(
                    &format!("/v1/streams/{}/events", name(&stream)),
                    with_raw("data", &data, body),
                    idempotency_key.as_deref(),
                )?
                .ok()?;
            c.print(&a, |v| v["ids"][0].as_str().unwrap_or_default().to_string())
        }
        EventsCmd::Range {
            stream,
            from,
            to,
            kind,
            order,
            limit,
        } => {
            let mut path = format!("/v1/streams/{}/events?limit={limit}", name(&stream));
            for (k, v) in [
                ("from", from.map(|v| v.to_string())),
                ("to", to.map(|v| v.to_string())),
                ("type", kind),
                ("order", order),
            ] {
                if let Some(v) = v {
                    path.push_str(&format!("&{k}={}", q(&v)));
                }
            }
            let a = c.get(&path)?.ok()?;
            if c.json {
                return c.print(&a, |_| String::new());
            }
            let page: Events = serde_json::from_slice(&a.body).map_err(|e| {
                Fail(
                    Exit::Refused,
                    format!("an answer this client does not read: {e}"),
                )
            })?;
            for e in &page.events {
                emit(&event_line(e))?;
            }
            Ok(Exit::Ok)
        }
        EventsCmd::Tail { stream, after } => {
            let mut path = format!("/v1/streams/{}/events?follow=true", name(&stream));
            if let Some(a) = after {
                path.push_str(&format!("&after={}", q(&a)));
            }
            c.rt.block_on(async {
                let resp = c
                    .send(
                        "GET",
                        &path,
                        &[("accept", "text/event-stream".into())],
                        vec![],
                    )
                    .await?;
                let status = resp.status().as_u16();
                let headers = resp.headers().clone();
                let mut body = resp.into_body();
                if status != 200 {
                    let body = body
                        .collect()
                        .await
                        .map(|b| b.to_bytes())
                        .unwrap_or_default();
                    return Err(Answer {
                        status,
                        headers,
                        body,
                    }
                    .fail());
                }
                let mut buf: Vec<u8> = Vec::new();
                while let Some(frame) = body.frame().await {
                    let frame =
                        frame.map_err(|e| Fail(Exit::Unavailable, format!("the stream: {e}")))?;
                    let Ok(data) = frame.into_data() else {
                        continue;
                    };
                    buf.extend_from_slice(&data);
                    // One SSE event per blank line; its `data:` line is the event's JSON.
                    while let Some(end) = memchr::memmem::find(&buf, b"\n\n") {
                        let block: Vec<u8> = buf.drain(..end + 2).collect();
                        let text = String::from_utf8_lossy(&block);
                        let field = |name: &str| {
                            text.lines().find_map(|l| {
                                l.strip_prefix(name)
                                    .and_then(|v| v.strip_prefix(':'))
                                    .map(|v| v.strip_prefix(' ').unwrap_or(v))
                            })
                        };
                        let Some(data) = field("data") else {
                            continue; // a comment or a heartbeat
                        };
                        if field("event") == Some("error") {
                            // The server ended the stream in band (events.rs).
                            return Err(Fail(Exit::Unavailable, format!("the stream: {data}")));
                        }
                        // The `data:` line is the event, as a range answers it.
                        if c.json {
                            emit(data)?;
                        } else {
                            let event: Event = serde_json::from_str(data).map_err(|e| {
                                Fail(
                                    Exit::Refused,
                                    format!("an event this client does not read: {e}"),
                                )
                            })?;
                            emit(&event_line(&event))?;
                        }
                    }
                }
                // A follow only ends when the server stops or drops it: a script reconnects.
                Err(Fail(
                    Exit::Unavailable,
                    "the server ended the stream".into(),
                ))
            })
        }
    }
}

pub fn cache(args: CacheArgs) -> ExitCode {
    finish(Client::new(&args.conn).and_then(|c| cache_run(&c, args.cmd)))
}

fn cache_run(c: &Client, cmd: CacheCmd) -> Out {
    match cmd {
        CacheCmd::Get { ns, key: k } => {
            // It fills nothing: it takes no fill lease (which would keep the callers that fill
            // waiting), on a miss or a stale hit.
            let a = c.get(&format!("/v1/cache/{}/{}?lease=false", name(&ns), key(&k)))?;
            if a.status == 404 {
                return Err(Fail(Exit::NotFound, "cache miss".into()));
            }
            write_raw(&a.ok()?.body)
        }
        CacheCmd::Put {
            ns,
            key: k,
            value,
            ttl,
            tags,
            content_type,
        } => {
            let body = value_arg(&value)?;
            let mut path = format!("/v1/cache/{}/{}", name(&ns), key(&k));
            if let Some(t) = ttl {
                path.push_str(&format!("?ttl={}", q(&t)));
            }
            let mut headers = vec![];
            if !tags.is_empty() {
                headers.push(("cache-tag", tags.join(",")));
            }
            if let Some(ct) = content_type {
                headers.push(("content-type", ct));
            }
            c.call("PUT", &path, &headers, body)?.ok()?;
            Ok(Exit::Ok)
        }
        CacheCmd::Purge { ns, tags, all } => {
            if tags.is_empty() != all {
                return Err(Fail(
                    Exit::Local,
                    "give --tag T (repeatable) or --all, not both".into(),
                ));
            }
            let body = if all {
                json!({"all": true})
            } else {
                json!({ "tags": tags })
            };
            let a = c
                .post_json(&format!("/v1/cache/{}:purge", name(&ns)), body)?
                .ok()?;
            c.print(&a, |_| String::new())
        }
    }
}

/// `shardbox promote`: makes the standby at `--server` the primary.
pub fn promote(args: StatusArgs) -> ExitCode {
    finish(Client::new(&args.conn).and_then(|c| {
        let a = c.post_json("/v1/admin/promote", Value::Null)?.ok()?;
        c.print(&a, |v| {
            format!(
                "promoted: generation {} continues {} from record {} ({} ms)",
                v["generation"].as_str().unwrap_or("?"),
                v["previous"].as_str().unwrap_or("?"),
                v["through_lsn"],
                v["took_ms"]
            )
        })
    }))
}

pub fn status(args: StatusArgs) -> ExitCode {
    finish(Client::new(&args.conn).and_then(|c| {
        let a = c.get("/v1/status")?.ok()?;
        c.print(&a, |v| {
            let mut out = Vec::new();
            flatten("", v, 0, &mut out);
            out.join("\n")
        })
    }))
}

/// `a.b: value` lines, two levels deep (deeper objects and long arrays as JSON).
fn flatten(prefix: &str, v: &Value, depth: usize, out: &mut Vec<String>) {
    match v {
        Value::Object(m) if depth < 2 => {
            for (k, v) in m {
                let p = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&p, v, depth + 1, out);
            }
        }
        Value::String(s) => out.push(format!("{prefix}: {s}")),
        v => out.push(format!("{prefix}: {v}")),
    }
}
