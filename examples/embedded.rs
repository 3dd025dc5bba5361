//! An appliance that embeds shardbox: it opens a store, writes readings into it from its own
//! code (a KV "latest" value, an event per reading, a job when a reading is out of range), and
//! serves the same store over HTTP for whoever wants to look.
//!
//! ```text
//! cargo run --example embedded -- [DATA_DIR] [LISTEN]      # defaults: ./embedded-data 127.0.0.1:7071
//! curl -s localhost:7071/v1/kv/sensor/latest
//! curl -s 'localhost:7071/v1/streams/readings/events?limit=5'
//! curl -s -XPOST localhost:7071/v1/queues/alerts/claim -d '{}'
//! ```
//!
//! Ctrl-C stops it: the server drains its requests, then the store commits and closes.

use shardbox::events::NewEvent;
use shardbox::kv::PutOptions;
use shardbox::queue::NewJob;
use shardbox::{Config, Store};
use std::time::Duration;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let dir = args.next().unwrap_or_else(|| "./embedded-data".into());
    let mut config = Config::with_data_dir(dir);
    config.http.listen = args.next().unwrap_or_else(|| "127.0.0.1:7071".into());
    config.check_exposure()?;
    let store = Store::open(config)?;
    let listener = tokio::net::TcpListener::bind(&store.config().http.listen).await?;
    println!(
        "serving {} on http://{}",
        store.config().data_dir.display(),
        listener.local_addr()?
    );

    // The appliance's own work: one reading a second, straight into the store.
    let writer = {
        let store = store.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            for n in 0u64.. {
                tick.tick().await;
                let celsius = 20.0 + (n % 20) as f64 * 0.5;
                let reading = format!(r#"{{"celsius":{celsius},"n":{n}}}"#).into_bytes();
                let latest = PutOptions {
                    content_type: Some("application/json".into()),
                    ..Default::default()
                };
                let event = NewEvent {
                    ts: None,
                    kind: Some("reading".into()),
                    data: reading.clone(),
                };
                let wrote = async {
                    store
                        .kv()
                        .put("sensor", "latest", reading.clone(), latest)
                        .await?;
                    store.events().append("readings", vec![event]).await?;
                    if celsius >= 29.0 {
                        let job = NewJob {
                            payload: reading,
                            ..Default::default()
                        };
                        store.queues().enqueue("alerts", vec![job]).await?;
                    }
                    Ok::<(), Box<dyn std::error::Error + Send + Sync>>(())
                };
                if let Err(e) = wrote.await {
                    eprintln!("reading {n} not stored: {e}");
                }
            }
        })
    };

    shardbox::http::run(listener, store.clone(), async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await?;
    writer.abort();
    store.close_cache().await;
    store.close();
    Ok(())
}
