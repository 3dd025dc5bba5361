//! Layer 4, the HTTP/1.1 server over a [`Store`](crate::Store): [`run`] serves one until told to stop.
//!
//! The rooms: `listener.rs` accepts (connection limits, TLS, shutdown), `connection.rs` hands
//! one connection to `h1/` (shardbox's own HTTP/1.1: heads, bodies, responses), `state.rs` is what every handler shares, `admin_socket.rs` the admin
//! socket; `dispatch.rs` routes a request through `access.rs` (request id, tokens, rate limits)
//! to a domain's handlers (`kv.rs`, `queue.rs`, `events.rs`, `cache.rs`) declared in
//! `route_table.rs`; `retries.rs` replays kept `Idempotency-Key` responses; `error.rs` turns every
//! domain's errors into statuses and JSON.
//!
//! `run(listener, store, shutdown)` takes a bound listener, so tests bind `127.0.0.1:0`.

mod access;
mod access_log;
mod admin_socket;
mod connection;
pub mod error;
internal!(body, response);
mod admin;
mod cache;
mod changes;
mod conns;
mod dispatch;
mod events;
mod h1;
mod health;
mod input;
mod kv;
mod listener;
mod metrics;
mod peer;
mod queue;
mod retries;
mod route_table;
mod state;
mod status;
pub mod tls;
mod window;

testing_pub! { use dispatch::{find_route, idempotent_routes, routes}; }
testing_pub! { use route_table::{check_query, match_template, Match, Params, RouteDef}; }

pub use admin_socket::admin_socket_path;
testing_pub! { use connection::serve_stream; }
pub use listener::run;
testing_pub! { use state::{long_polls_max, ServerState}; }
