//! Who may do what, over a real socket: the token matrix over every route, the refusal to
//! serve a LAN without tokens, HTTPS with a certificate made here, rate limits, request ids.

use crate::common;

use bytes::Bytes;
use common::{Client, TestServer};
use shardbox::tokens::{new_token, Scope, TokenConfig};
use std::time::Duration;

struct Creds {
    reader: String,
    writer: String,
    admin: String,
    limited: String,
    feeder: String,
}

fn entry(name: &str, token: &str, scopes: &[Scope], limit: bool) -> TokenConfig {
    let lim = || limit.then(|| vec!["app-".to_string()]);
    TokenConfig {
        name: name.into(),
        sha256: shardbox::tokens::hash_token(token),
        scopes: scopes.to_vec(),
        namespaces: lim(),
        streams: lim(),
        queues: lim(),
    }
}

async fn server_with_tokens() -> (TestServer, Creds) {
    let c = Creds {
        reader: new_token(),
        writer: new_token(),
        admin: new_token(),
        limited: new_token(),
        feeder: new_token(),
    };
    let tokens = vec![
        entry("reader", &c.reader, &[Scope::Read], false),
        entry("writer", &c.writer, &[Scope::Read, Scope::Write], false),
        entry("admin", &c.admin, &[Scope::Admin], false),
        entry("limited", &c.limited, &[Scope::Read, Scope::Write], true),
        entry("feeder", &c.feeder, &[Scope::Feed], false),
    ];
    let s = TestServer::start_with(|c| c.http.tokens = tokens).await;
    (s, c)
}

/// The scope a route needs, written down independently of the server's own rule.
fn expected_scope(method: &str, path: &str) -> Option<Scope> {
    if path == "/healthz" || path == "/readyz" || path == "/" {
        return None;
    }
    if path.starts_with("/v1/changes") {
        return Some(Scope::Feed);
    }
    if path.starts_with("/v1/admin")
        || (method, path) == ("DELETE", "/v1/kv/{ns}")
        || (method, path) == ("DELETE", "/v1/queues/{q}/jobs")
    {
        return Some(Scope::Admin);
    }
    if method == "GET" || method == "HEAD" || path.ends_with(":batchGet") {
        return Some(Scope::Read);
    }
    Some(Scope::Write)
}

/// A concrete path for a template, every name set to `name`.
fn fill(template: &str, name: &str) -> String {
    template
        .replace("{ns}", name)
        .replace("{stream}", name)
        .replace("{q}", name)
        .replace("{name}", name)
        .replace("{key}", "k")
        .replace("{id}", "1")
}

/// Sends one request on a fresh connection and returns the status and the
/// `WWW-Authenticate` header, without waiting for a streamed body.
async fn status_of(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
) -> (u16, Option<String>) {
    let mut c = Client::connect(addr).await;
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut headers = vec![];
    if let Some(a) = &auth {
        headers.push(("authorization", a.as_str()));
    }
    let resp = tokio::time::timeout(
        Duration::from_secs(10),
        c.try_send(method, path, &headers, Bytes::new()),
    )
    .await;
    match resp {
        Ok(Ok(r)) => (r.status, r.header("www-authenticate").map(str::to_string)),
        // A hang or a reset is a failure, never "admitted".
        Ok(Err(e)) => panic!("{method} {path}: the connection failed: {e}"),
        Err(_) => panic!("{method} {path}: no answer within 10 s"),
    }
}

#[tokio::test]
async fn every_route_by_every_kind_of_caller() {
    let (s, c) = server_with_tokens().await;
    let wrong = new_token();
    let mut checked = 0;
    for (method, template, _) in shardbox::http::routes() {
        let need = expected_scope(method, template);
        let named =
            template.contains("{ns}") || template.contains("{stream}") || template.contains("{q}");
        let path = fill(template, "app-x");
        // No token, a wrong token.
        for token in [None, Some(wrong.as_str())] {
            let (status, www) = status_of(s.addr, method, &path, token).await;
            if need.is_none() {
                assert!(status != 401 && status != 403, "{method} {path}: {status}");
            } else {
                assert_eq!(status, 401, "{method} {path} with {token:?}");
                assert!(
                    www.as_deref().is_some_and(|w| w.starts_with("Bearer")),
                    "{method} {path}: 401 without WWW-Authenticate"
                );
            }
        }
        for (who, token, scopes) in [
            ("reader", &c.reader, vec![Scope::Read]),
            ("writer", &c.writer, vec![Scope::Read, Scope::Write]),
            (
                "admin",
                &c.admin,
                vec![Scope::Read, Scope::Write, Scope::Admin, Scope::Feed],
            ),
            ("feeder", &c.feeder, vec![Scope::Feed]),
        ] {
            let (status, _) = status_of(s.addr, method, &path, Some(token)).await;
            let allowed = need.is_none_or(|n| scopes.contains(&n));
            if allowed {
                assert!(
                    status != 401 && status != 403,
                    "{who}: {method} {path}: {status}"
                );
            } else {
                assert_eq!(status, 403, "{who}: {method} {path}");
            }
        }
        // A token limited to `app-` names: inside, outside, and routes over every name.
        let (inside, _) = status_of(s.addr, method, &path, Some(&c.limited)).await;
        let outside_path = fill(template, "other");
        let (outside, _) = status_of(s.addr, method, &outside_path, Some(&c.limited)).await;
        match need {
            None => assert!(inside != 401 && inside != 403),
            Some(Scope::Admin) => assert_eq!(inside, 403, "limited: {method} {path}"),
            Some(_) if named && !template.starts_with("/v1/schedules") => {
                assert!(
                    inside != 401 && inside != 403,
                    "limited: {method} {path}: {inside}"
                );
                assert_eq!(outside, 403, "limited: {method} {outside_path}");
            }
            Some(_) => assert_eq!(
                inside, 403,
                "limited, route over every name: {method} {path}"
            ),
        }
        checked += 1;
    }
    assert!(checked > 40, "only {checked} routes");
    // The refusals are counted.
    let mut admin = s.client().await;
    let auth = format!("Bearer {}", c.admin);
    let m = admin
        .send("GET", "/metrics", &[("authorization", &auth)], Bytes::new())
        .await
        .text();
    for name in ["shardbox_unauthorized_total", "shardbox_forbidden_total"] {
        let n = common::metric(&m, name);
        assert!(n > 0.0, "{name} = {n}");
    }
    s.stop().await;
}

#[tokio::test]
async fn a_token_from_token_new_works_end_to_end() {
    // The CLI prints the token on stdout and the config lines on stderr.
    let out =
        common::cli::shardbox(&["token", "new", "--name", "ingest", "--scopes", "read,write"]);
    assert!(out.status.success());
    let token = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let snippet = String::from_utf8(out.stderr).unwrap();
    assert!(
        !snippet.contains(&token),
        "the config lines must not hold the token"
    );
    let config = shardbox::Config::resolve(
        Some(
            &snippet
                .lines()
                .skip_while(|l| !l.starts_with("[[tokens]]"))
                .collect::<Vec<_>>()
                .join("\n"),
        ),
        Vec::<(String, String)>::new(),
        &[],
    )
    .expect("the printed lines are a valid config");
    assert_eq!(config.http.tokens.len(), 1);
    let tokens = config.http.tokens.clone();
    let s = TestServer::start_with(|c| c.http.tokens = tokens).await;
    let mut cl = s.client().await;
    let auth = format!("Bearer {token}");
    let r = cl
        .send("PUT", "/v1/kv/app/a", &[("authorization", &auth)], "v")
        .await;
    assert!(r.status < 300, "{}", r.text());
    let r = cl
        .send("GET", "/v1/kv/app/a", &[("authorization", &auth)], "")
        .await;
    assert_eq!((r.status, r.text().as_str()), (200, "v"));
    let r = cl.get("/v1/kv/app/a").await;
    assert_eq!(r.status, 401);
    assert_eq!(r.error_code(), "unauthorized");
    // Tokens also come from the environment, as a TOML array.
    let env_tokens = format!(
        "[{{name = \"e\", sha256 = \"{}\", scopes = [\"read\"]}}]",
        shardbox::tokens::hash_token("secret")
    );
    let c = shardbox::Config::resolve(None, vec![("SHARDBOX_TOKENS".to_string(), env_tokens)], &[])
        .expect("tokens from the environment");
    assert_eq!(c.http.tokens[0].name, "e");
    s.stop().await;
}

#[test]
fn a_lan_address_without_tokens_refuses_to_start() {
    let tmp = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_shardbox"))
        .args(["serve", "--listen", "0.0.0.0:0", "--data"])
        .arg(tmp.path().join("d"))
        .output()
        .expect("run serve");
    assert!(!out.status.success(), "it started without authentication");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("shardbox token new"), "{err}");
    assert!(err.contains("--allow-unauthenticated"), "{err}");
    assert!(
        !tmp.path().join("d").exists(),
        "nothing is created before the refusal"
    );

    // Explicitly allowed: it starts (and is stopped here).
    let mut child = common::spawn::KillOnDrop(
        std::process::Command::new(env!("CARGO_BIN_EXE_shardbox"))
            .args([
                "serve",
                "--listen",
                "0.0.0.0:0",
                "--allow-unauthenticated",
                "--log-format",
                "json",
                "--data",
            ])
            .arg(tmp.path().join("d"))
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn"),
    );
    use std::io::BufRead;
    let stderr = child.stderr.take().unwrap();
    let listening = std::io::BufReader::new(stderr)
        .lines()
        .map_while(Result::ok)
        .any(|l| l.contains("shardbox listening"));
    assert!(
        listening,
        "--allow-unauthenticated did not start the server"
    );
}

fn write_cert(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf, Vec<u8>) {
    use std::os::unix::fs::PermissionsExt;
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let cert_path = dir.join("cert.pem");
    let key_path = dir.join("key.pem");
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.key_pair.serialize_pem()).unwrap();
    std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o600)).unwrap();
    (cert_path, key_path, cert.cert.der().to_vec())
}

#[tokio::test]
async fn https_round_trip_with_a_self_signed_certificate() {
    use hyper_util::rt::TokioIo;
    use std::sync::Arc;
    let tmp = tempfile::tempdir().unwrap();
    let (cert_path, key_path, der) = write_cert(tmp.path());
    let (cp, kp) = (cert_path.clone(), key_path.clone());
    let s = TestServer::start_with(move |c| {
        c.http.tls_cert = cp;
        c.http.tls_key = kp;
    })
    .await;

    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls::pki_types::CertificateDer::from(der))
        .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tls = connector.connect(name, tcp).await.expect("TLS handshake");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    use http_body_util::{BodyExt, Full};
    for (method, body, want) in [("PUT", "secret value", 201u16), ("GET", "", 200)] {
        let req = hyper::Request::builder()
            .method(method)
            .uri("/v1/kv/app/tls")
            .header("host", "localhost")
            .body(Full::new(Bytes::from(body)))
            .unwrap();
        let r = sender.send_request(req).await.unwrap();
        let status = r.status().as_u16();
        let got = r.into_body().collect().await.unwrap().to_bytes();
        assert!(
            status == want || (method == "PUT" && status == 200),
            "{method}: {status} {got:?}"
        );
        if method == "GET" {
            assert_eq!(got, "secret value");
        }
    }
    // Plain HTTP to the HTTPS port is not served, and is told so in plain HTTP.
    let mut plain = Client::connect(s.addr).await;
    let r = tokio::time::timeout(
        Duration::from_secs(5),
        plain.try_send("GET", "/healthz", &[], ""),
    )
    .await
    .expect("an answer in time")
    .expect("a plain HTTP answer");
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "https_required");
    s.stop().await;

    // A key every user can read is refused, with the fix in the message.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut cfg = shardbox::Config::with_data_dir(tmp.path().join("d"));
    cfg.http.tls_cert = cert_path;
    cfg.http.tls_key = key_path;
    let err = shardbox::http::tls::acceptor(&cfg).err().expect("refused");
    assert!(err.contains("chmod 600"), "{err}");
}

#[tokio::test]
async fn a_burst_over_the_write_limit_gets_429s_with_headers() {
    let s = TestServer::start_with(|c| {
        c.http.rate_limit_writes_per_s = 2;
        c.http.rate_limit_burst = 3;
    })
    .await;
    let mut c = s.client().await;
    let mut statuses = Vec::new();
    let mut limited = None;
    for i in 0..30 {
        let r = c.put(&format!("/v1/kv/app/k{i}"), "v").await;
        assert_eq!(r.header("ratelimit-limit"), Some("3"), "{i}");
        assert!(r.header("ratelimit-remaining").is_some());
        assert!(r.header("ratelimit-reset").is_some());
        if r.status == 429 && limited.is_none() {
            limited = Some(r);
        } else {
            statuses.push(r.status);
        }
    }
    let limited = limited.expect("no 429 in a burst of 30 at 2/s");
    assert_eq!(limited.error_code(), "rate_limited");
    assert_eq!(limited.header("ratelimit-remaining"), Some("0"));
    let retry: u64 = limited.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=2).contains(&retry), "retry-after {retry}");
    // The first three (the burst) went through.
    assert!(statuses.iter().take(3).all(|s| *s < 300), "{statuses:?}");
    // Reads have their own limit (none here): never 429.
    for _ in 0..20 {
        let r = c.get("/v1/kv/app/k0").await;
        assert_eq!(r.status, 200);
        assert!(r.header("ratelimit-limit").is_none());
    }
    // Waiting as told lets writes through again.
    tokio::time::sleep(Duration::from_secs(retry)).await;
    let r = c.put("/v1/kv/app/after", "v").await;
    assert!(r.status < 300, "{}: {}", r.status, r.text());
    let m = c.get("/metrics").await.text();
    assert!(
        common::metric(&m, "shardbox_rate_limited_total") > 0.0,
        "not counted"
    );
    s.stop().await;
}

/// The limiter forgets idle clients by itself (the server's prune task, every 10 s).
#[tokio::test]
async fn idle_clients_are_forgotten_by_the_running_server() {
    let s = TestServer::start_with(|c| c.http.rate_limit_writes_per_s = 100).await;
    let mut c = s.client().await;
    let clients = "shardbox_rate_limit_clients";
    assert_eq!(common::scrape(s.addr, clients).await, 0.0);
    assert!(c.put("/v1/kv/app/a", "v").await.status < 300);
    assert_eq!(common::scrape(s.addr, clients).await, 1.0);
    common::eventually(25, "the idle client is forgotten", || {
        let addr = s.addr;
        async move { (common::scrape(addr, clients).await == 0.0).then_some(()) }
    })
    .await;
    s.stop().await;
}

#[tokio::test]
async fn under_the_limit_nothing_is_refused() {
    let s = TestServer::start_with(|c| {
        c.http.rate_limit_writes_per_s = 1000;
        c.http.rate_limit_reads_per_s = 1000;
    })
    .await;
    let mut c = s.client().await;
    for i in 0..50 {
        let r = c.put(&format!("/v1/kv/app/k{i}"), "v").await;
        assert!(r.status < 300, "{i}: {}", r.status);
        let r = c.get(&format!("/v1/kv/app/k{i}")).await;
        assert_eq!(r.status, 200);
    }
    s.stop().await;
}

#[tokio::test]
async fn request_ids_are_echoed_or_made() {
    let s = TestServer::start().await;
    let mut c = s.client().await;
    let r = c
        .send(
            "GET",
            "/v1/kv/app/missing",
            &[("x-request-id", "trace-42")],
            "",
        )
        .await;
    assert_eq!(r.header("x-request-id"), Some("trace-42"));
    let a = c.get("/healthz").await;
    let b = c.get("/healthz").await;
    let (a, b) = (
        a.header("x-request-id").unwrap(),
        b.header("x-request-id").unwrap(),
    );
    assert_eq!(a.len(), 32);
    assert_ne!(a, b);
    s.stop().await;
}

/// Sends `PUT path` from local address `from` on a new connection; returns the status line.
async fn put_from(addr: std::net::SocketAddr, from: &str, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(format!("{from}:0").parse().unwrap()).unwrap();
    let mut s = socket.connect(addr).await.unwrap();
    s.write_all(format!("PUT {path} HTTP/1.1\r\nhost: t\r\ncontent-length: 1\r\n\r\nv").as_bytes())
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = s.read(&mut buf).await.unwrap_or(0);
    String::from_utf8_lossy(&buf[..n])
        .lines()
        .next()
        .unwrap_or("")
        .to_string()
}

/// Past `rate_limit_clients_max` buckets a new address shares its network's bucket (/24), not
/// one bucket with every other newcomer (issue 19: 20 of 20 fresh addresses got 429 because
/// one client had used up the shared bucket).
#[tokio::test]
async fn past_the_client_bound_addresses_share_their_networks_bucket_not_everyones() {
    let s = TestServer::start_with(|c| {
        c.http.rate_limit_writes_per_s = 1;
        c.http.rate_limit_burst = 2;
        c.http.rate_limit_clients_max = 2;
    })
    .await;
    // Two addresses take the two buckets.
    for from in ["127.0.0.1", "127.0.0.2"] {
        assert!(
            put_from(s.addr, from, "/v1/kv/a/k").await.contains("20"),
            "{from}"
        );
    }
    // A third spends its network's bucket.
    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(put_from(s.addr, "127.0.0.3", "/v1/kv/a/k").await);
    }
    assert!(statuses.iter().any(|l| l.contains("429")), "{statuses:?}");
    // Its neighbour in the same /24 shares that bucket …
    assert!(put_from(s.addr, "127.0.0.4", "/v1/kv/a/k")
        .await
        .contains("429"));
    // … while fresh addresses of other networks are served.
    for from in ["127.0.1.5", "127.0.2.6"] {
        let line = put_from(s.addr, from, "/v1/kv/a/k").await;
        assert!(line.contains("20"), "{from}: {line}");
    }
    s.stop().await;
}
