//! The HTTP ceiling: a bare hyper 1 + tokio server (the runtime and HTTP/1.1 settings
//! shardbox uses by default) that answers every request with 100 fixed bytes and touches no
//! storage. Whatever shardbox spends above it per request is shardbox's own code. The suite
//! runs it as a separate process — this same binary, started with `--ceiling-server PORT` —
//! so its CPU time is read from /proc like every other server's.

use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use std::convert::Infallible;

const ANSWER: &[u8; 100] = &[b'v'; 100];

/// Serves the ceiling and exits when asked to (`--ceiling-server PORT` among the arguments);
/// returns at once otherwise.
pub fn serve_if_asked() {
    let args: Vec<String> = std::env::args().collect();
    let Some(i) = args.iter().position(|a| a == "--ceiling-server") else {
        return;
    };
    let port: u16 = args
        .get(i + 1)
        .and_then(|p| p.parse().ok())
        .expect("--ceiling-server PORT");
    if args.iter().any(|a| a == "--per-core") {
        serve_per_core(port);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .expect("bind the ceiling's port");
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            tokio::spawn(serve_conn(stream));
        }
    });
    std::process::exit(0);
}

/// One connection: every request answered with [`ANSWER`].
async fn serve_conn(stream: tokio::net::TcpStream) {
    let svc = service_fn(|req: hyper::Request<hyper::body::Incoming>| async move {
        // A PUT's body is read and dropped, as a store would read it.
        let _ = req.into_body().collect().await;
        Ok::<_, Infallible>(hyper::Response::new(Full::new(bytes::Bytes::from_static(
            ANSWER,
        ))))
    });
    let _ = http1::Builder::new()
        .serve_connection(TokioIo::new(stream), svc)
        .await;
}

/// The other runtime shape (`--per-core`): one current-thread runtime per core, each with its
/// own `SO_REUSEPORT` listener on the port (the kernel spreads connections over them), so a
/// connection lives on one thread from accept to close — no work stealing, no cross-thread
/// wake-ups.
fn serve_per_core(port: u16) -> ! {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads: Vec<_> = (0..cores)
        .map(|_| {
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("runtime");
                rt.block_on(async move {
                    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
                    socket.set_reuseport(true).expect("SO_REUSEPORT");
                    socket.set_reuseaddr(true).expect("SO_REUSEADDR");
                    socket
                        .bind(([127, 0, 0, 1], port).into())
                        .expect("bind the ceiling's port");
                    let listener = socket.listen(1024).expect("listen");
                    loop {
                        let Ok((stream, _)) = listener.accept().await else {
                            continue;
                        };
                        let _ = stream.set_nodelay(true);
                        tokio::spawn(serve_conn(stream));
                    }
                });
            })
        })
        .collect();
    for t in threads {
        let _ = t.join();
    }
    std::process::exit(0);
}
