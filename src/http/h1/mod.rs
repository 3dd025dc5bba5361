//! shardbox's HTTP/1.1 connection (RFC 9112): the request head parsed by httparse into `http`
//! types, the body fed to its handler on demand, the response written with one write.
//!
//! Why not hyper's server: hyper is general (any service, any body, HTTP/2, upgrades) and pays
//! for it on every request — a channel per body, a timer per head, a service future per
//! request, a flush per response — and it owns the loop, so a request that answers at once
//! still went through a boxed future and a header map of ours (docs/benchmarks.md: a hot GET
//! fell from 25,116 to 14,346 instructions). This one does what shardbox's routes need and no
//! more: `Content-Length` and chunked request bodies, `Expect: 100-continue`, keep-alive and
//! HTTP/1.0, pipelining (answers gathered into one write), chunked streamed responses (SSE,
//! NDJSON), and refusals with JSON bodies for heads that cannot be read one way only.
//!
//! The rooms: `head.rs` parses a head and its framing; `incoming.rs` is a request body, as
//! the handler reads it and the connection feeds it; `encode.rs` writes response heads and
//! chunks; `conn.rs` is the loop of one connection.

mod conn;
mod encode;
mod head;
mod incoming;

pub use conn::serve;
pub use incoming::Incoming;
