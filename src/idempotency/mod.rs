//! Idempotency keys: the first response to a request carrying `Idempotency-Key` is kept, so a
//! client that retries (after a timeout, a dropped connection, a crash of its own) gets that
//! same response back instead of creating a second job, event or increment.
//!
//! A record lives in the shard its key hashes to, written through that shard's writer (so it is
//! in the log and durable before the reply, and survives a restart), and expires after
//! `idempotency_ttl_ms` (24 h by default). Records are keyed by caller (token name) and key, so
//! two tokens never see each other's keys. Which requests take a key, and what is replayed, is
//! the HTTP layer's business (`http::retries`); this is the storage.
//!
//! Tables (invariant: every record has exactly one expiry entry, `be(expires_at_ms) ++ key`):
//! - `idem`: record key (`caller \0 key`) → [`Stored`]
//! - `idem_expiry`: `be(expires_at_ms) ++ record key` → ()

use crate::engine::codec::{decode_record, encode_record};
use crate::engine::{storage_error, ApplyCtx, Engine, OpError};
use crate::engine::EngineError;
use bincode::{Decode, Encode};
use redb::{ReadableTable, TableDefinition};
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub const IDEM: TableDefinition<&[u8], &[u8]> = TableDefinition::new("idem");
pub const IDEM_EXPIRY: TableDefinition<&[u8], ()> = TableDefinition::new("idem_expiry");

/// The record format's version byte.
const VERSION: u8 = 1;

/// Longest `Idempotency-Key` accepted (bytes of visible ASCII).
pub const KEY_BYTES_MAX: usize = 255;

/// A kept response and the fingerprint of the request that produced it.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct Stored {
    pub version: u8,
    /// SHA-256 of method, path and query, content type and body: a retry must match it.
    pub request_sha256: [u8; 32],
    pub expires_at_ms: u64,
    pub status: u16,
    /// The response's headers as sent (name, value).
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Vec<u8>,
}

impl Stored {
    pub fn new(
        request_sha256: [u8; 32],
        expires_at_ms: u64,
        status: u16,
        headers: Vec<(String, Vec<u8>)>,
        body: Vec<u8>,
    ) -> Self {
        Self {
            version: VERSION,
            request_sha256,
            expires_at_ms,
            status,
            headers,
            body,
        }
    }
}

/// The record key of `key` sent by `caller` ("" without tokens).
pub fn record_key(caller: &str, key: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(caller.len() + 1 + key.len());
    k.extend_from_slice(caller.as_bytes());
    k.push(0);
    k.extend_from_slice(key.as_bytes());
    k
}

use crate::engine::expiry::key as expiry_key;

pub fn init_tables(txn: &redb::WriteTransaction) -> Result<(), redb::Error> {
    txn.open_table(IDEM)?;
    txn.open_table(IDEM_EXPIRY)?;
    Ok(())
}

/// The idempotency-key domain: kept responses, and the keys whose first request is running.
pub struct Idempotency {
    engine: Arc<Engine>,
    ttl_ms: u64,
    /// Record keys whose first request is running now (bounded by the open connections: each
    /// entry belongs to one request in flight).
    running: Mutex<HashSet<Vec<u8>>>,
}

/// A key's first request, running; the key is free again when this drops (also on panic or a
/// client that hung up).
pub struct Running {
    idem: Arc<Idempotency>,
    key: Vec<u8>,
}

impl Drop for Running {
    fn drop(&mut self) {
        let mut r = self.idem.running.lock().unwrap_or_else(|p| p.into_inner());
        r.remove(&self.key);
    }
}

impl Idempotency {
    testing_pub! {
        fn new(engine: Arc<Engine>, config: &crate::base::config::Config) -> Self {
            Self {
                engine,
                ttl_ms: config.idempotency.idempotency_ttl_ms,
                running: Mutex::new(HashSet::new()),
            }
        }
    }

    /// How long a kept response is replayed.
    pub fn ttl_ms(&self) -> u64 {
        self.ttl_ms
    }

    /// The kept response for `key`, unless it has expired.
    pub fn get(&self, key: &[u8]) -> Result<Option<Stored>, EngineError> {
        let shard = self.engine.shard_for(key);
        let txn = self.engine.shards()[shard].read()?;
        let table = match txn.open_table(IDEM) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(storage_error(shard, e)),
        };
        let Some(v) = table.get(key).map_err(|e| storage_error(shard, e))? else {
            return Ok(None);
        };
        let s: Stored = decode_record(v.value()).map_err(|detail| EngineError::Corrupt {
            shard,
            key: crate::base::names::display_key(key),
            detail,
        })?;
        Ok((s.expires_at_ms > self.engine.now_ms()).then_some(s))
    }

    /// Marks `key`'s first request as running; `None` when one already is.
    pub fn begin(self: &Arc<Self>, key: Vec<u8>) -> Option<Running> {
        let mut r = self.running.lock().unwrap_or_else(|p| p.into_inner());
        if !r.insert(key.clone()) {
            return None;
        }
        Some(Running {
            idem: self.clone(),
            key,
        })
    }

    /// Keeps `stored` under `key`, durably, replacing an expired record.
    pub async fn save(&self, key: Vec<u8>, stored: Stored) -> Result<(), EngineError> {
        let shard = self.engine.shard_for(&key);
        let bytes = encode_record(&stored);
        let at = stored.expires_at_ms;
        self.engine
            .write(shard, bytes.len() + key.len(), move |ctx| {
                save(ctx, &key, &bytes, at).map_err(OpError::<EngineError>::Storage)
            })
            .await
    }
}

fn save(ctx: &mut ApplyCtx<'_, '_>, key: &[u8], bytes: &[u8], at: u64) -> Result<(), redb::Error> {
    let mut t = ctx.table(IDEM)?;
    let mut exp = ctx.table(IDEM_EXPIRY)?;
    let old_at = match t.get(key)? {
        Some(old) => decode_record::<Stored>(old.value())
            .ok()
            .map(|o| o.expires_at_ms),
        None => None,
    };
    if let Some(old_at) = old_at {
        exp.remove(expiry_key(old_at, key).as_slice())?;
    }
    t.insert(key, bytes)?;
    exp.insert(expiry_key(at, key).as_slice(), ())?;
    Ok(())
}

/// Deletes up to `max` expired records of one shard; returns how many index entries it read.
fn sweep(ctx: &mut ApplyCtx<'_, '_>, max: usize) -> Result<usize, redb::Error> {
    let mut t = ctx.table(IDEM)?;
    let mut exp = ctx.table(IDEM_EXPIRY)?;
    let end = ctx.now_ms.saturating_add(1).to_be_bytes();
    let mut due: Vec<Vec<u8>> = Vec::new();
    for item in exp.range(..end.as_slice())?.take(max) {
        due.push(item?.0.value().to_vec());
    }
    for ek in &due {
        if let Some((at, key)) = ek.split_first_chunk::<8>() {
            let at = u64::from_be_bytes(*at);
            // Only if the record still carries this expiry (a newer one replaced it otherwise).
            let still = match t.get(key)? {
                Some(g) => decode_record::<Stored>(g.value())
                    .map(|s| s.expires_at_ms == at)
                    .unwrap_or(true),
                None => false,
            };
            if still {
                t.remove(key)?;
            }
        }
        exp.remove(ek.as_slice())?;
    }
    Ok(due.len())
}

testing_pub! {
    const DOMAIN: crate::engine::DomainSpec = crate::engine::DomainSpec {
        name: "idempotency",
        init_tables,
        check,
        open: Some(|engine, config| Arc::new(Idempotency::new(engine, config))),
        feed: None,
    };
}

/// `shardbox check`: every record decodes and has its expiry entry, and every expiry entry
/// names a record carrying that expiry.
fn check(
    txn: &redb::ReadTransaction,
    shard: usize,
    c: &mut crate::engine::domain::Checked<'_>,
) -> Result<(), redb::Error> {
    use crate::engine::domain::open;
    let (Some(table), exp) = (open(txn, IDEM)?, open(txn, IDEM_EXPIRY)?) else {
        return Ok(());
    };
    let shown = crate::base::names::display_key;
    for item in table.iter()? {
        let (k, v) = item?;
        c.record();
        match decode_record::<Stored>(v.value()) {
            Err(e) => c.problem(format!(
                "shard {shard}: idempotency record {:?}: {e}",
                shown(k.value())
            )),
            Ok(s) => {
                let ek = expiry_key(s.expires_at_ms, k.value());
                let indexed = match &exp {
                    Some(t) => t.get(ek.as_slice())?.is_some(),
                    None => false,
                };
                if !indexed {
                    c.problem(format!(
                        "shard {shard}: idempotency record {:?} has no idem_expiry entry (it would never be swept)",
                        shown(k.value())
                    ));
                }
            }
        }
    }
    if let Some(exp) = exp {
        for item in exp.iter()? {
            let (ek, _) = item?;
            let Some((at, key)) = ek.value().split_first_chunk::<8>() else {
                c.problem(format!(
                    "shard {shard}: idem_expiry entry shorter than 8 bytes"
                ));
                continue;
            };
            let matches = match table.get(key)? {
                Some(v) => decode_record::<Stored>(v.value())
                    .is_ok_and(|s| s.expires_at_ms == u64::from_be_bytes(*at)),
                None => false,
            };
            if !matches {
                c.problem(format!(
                    "shard {shard}: idem_expiry entry for {:?} names no record with that expiry",
                    shown(key)
                ));
            }
        }
    }
    Ok(())
}

impl crate::engine::Domain for Idempotency {
    fn background(
        self: Arc<Self>,
        config: &crate::base::config::Config,
    ) -> Vec<futures_util::future::BoxFuture<'static, ()>> {
        vec![Box::pin(crate::engine::expiry::run(
            self.engine.clone(),
            Duration::from_millis(config.kv.sweep_interval_ms),
            IDEM_EXPIRY,
            sweep,
            config.kv.delete_batch_keys_max,
        ))]
    }

    fn render_metrics(&self, out: &mut String) {
        let running = self.running.lock().unwrap_or_else(|p| p.into_inner()).len();
        out.push_str(
            "# HELP shardbox_idempotency_running Requests with an Idempotency-Key whose first run is in progress.\n# TYPE shardbox_idempotency_running gauge\n",
        );
        out.push_str(&format!("shardbox_idempotency_running {running}\n"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_round_trips_and_keys_sort_by_expiry() {
        let s = Stored::new(
            [7; 32],
            42,
            201,
            vec![("x".into(), b"y".to_vec())],
            b"{}".to_vec(),
        );
        assert_eq!(decode_record::<Stored>(&encode_record(&s)), Ok(s));
        assert!(expiry_key(1, b"zz") < expiry_key(2, b"aa"));
        assert_ne!(record_key("a", "k"), record_key("", "k"));
        assert_ne!(record_key("ab", "k"), record_key("a", "bk"));
    }
}
