//! Prefix listing: one ordered range scan per shard, merged k-way into one ordered page.

use super::{storage, stored_key, validate_key, KV};
use crate::base::invalid::Invalid;
use crate::engine::codec;
use crate::engine::Engine;
use crate::engine::EngineError;
use crate::kv::KvError;
use base64::Engine as _;
use std::cmp::Reverse;
use std::collections::BinaryHeap;

/// One listed key.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ListEntry {
    pub key: String,
    pub revision: u64,
    pub size: u64,
    pub expires_at: Option<u64>,
}

/// A page of keys and the cursor to the next page (`None` on the last page).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ListPage {
    pub keys: Vec<ListEntry>,
    pub cursor: Option<String>,
}

/// Cursors are the last key returned, base64url-encoded: opaque to clients, exact for us.
pub fn encode_cursor(key: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(key.as_bytes())
}

pub fn decode_cursor(cursor: &str) -> Result<String, KvError> {
    let bad = || KvError::Invalid(Invalid::BadCursor);
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(cursor)
        .map_err(|_| bad())?;
    let key = String::from_utf8(bytes).map_err(|_| bad())?;
    validate_key(&key).map_err(|_| bad())?;
    Ok(key)
}

pub(super) fn list(
    engine: &Engine,
    ns: &str,
    prefix: &str,
    after: Option<String>,
    limit: usize,
) -> Result<ListPage, KvError> {
    let ns_len = ns.len() + 1;
    let pfx = stored_key(ns, prefix);
    // Start at the prefix, or just after the cursor when that is further on.
    let after_sk = after.as_deref().map(|a| stored_key(ns, a));
    let start = match &after_sk {
        Some(a) if a.as_slice() >= pfx.as_slice() => a.clone(),
        _ => pfx.clone(),
    };
    let now = engine.now_ms();
    // Each shard contributes at most limit + 1 entries: one more than a page tells us whether
    // another page exists.
    let mut runs: Vec<Vec<ListEntry>> = Vec::with_capacity(engine.shards().len());
    for shard in engine.shards() {
        let id = shard.id;
        let txn = shard.read()?;
        let table = txn.open_table(KV).map_err(|e| storage(id, e))?;
        let mut run = Vec::new();
        for item in table
            .range(start.as_slice()..)
            .map_err(|e| storage(id, e))?
        {
            let (k, v) = item.map_err(|e| storage(id, e))?;
            let key = k.value();
            if !key.starts_with(&pfx) {
                break;
            }
            if Some(key) == after_sk.as_deref() {
                continue;
            }
            let value = v.value();
            let header = codec::decode_header(value).map_err(|e| EngineError::Corrupt {
                shard: id,
                key: String::from_utf8_lossy(&key[ns_len..]).into_owned(),
                detail: e.to_string(),
            })?;
            if header.is_expired(now) {
                continue;
            }
            run.push(ListEntry {
                key: String::from_utf8_lossy(&key[ns_len..]).into_owned(),
                revision: header.revision,
                size: (value.len() - header.len) as u64,
                expires_at: header.expires_at_ms,
            });
            if run.len() > limit {
                break;
            }
        }
        runs.push(run);
    }
    let (keys, more) = merge(runs, limit);
    let cursor = if more {
        keys.last().map(|e| encode_cursor(&e.key))
    } else {
        None
    };
    Ok(ListPage { keys, cursor })
}

/// k-way merge of sorted runs; returns the first `limit` entries and whether more exist.
fn merge(runs: Vec<Vec<ListEntry>>, limit: usize) -> (Vec<ListEntry>, bool) {
    let mut iters: Vec<_> = runs.into_iter().map(|r| r.into_iter()).collect();
    let mut heap = BinaryHeap::new();
    let mut heads: Vec<Option<ListEntry>> = Vec::with_capacity(iters.len());
    for (i, it) in iters.iter_mut().enumerate() {
        let head = it.next();
        if let Some(e) = &head {
            heap.push(Reverse((e.key.clone(), i)));
        }
        heads.push(head);
    }
    let mut out = Vec::with_capacity(limit);
    while let Some(Reverse((_, i))) = heap.pop() {
        if out.len() == limit {
            return (out, true);
        }
        if let Some(e) = heads[i].take() {
            out.push(e);
        }
        heads[i] = iters[i].next();
        if let Some(e) = &heads[i] {
            heap.push(Reverse((e.key.clone(), i)));
        }
    }
    (out, false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(k: &str) -> ListEntry {
        ListEntry {
            key: k.into(),
            revision: 1,
            size: 0,
            expires_at: None,
        }
    }

    #[test]
    fn merge_orders_and_reports_more() {
        let runs = vec![vec![e("a"), e("d")], vec![e("b"), e("c"), e("e")], vec![]];
        let (keys, more) = merge(runs.clone(), 10);
        let names: Vec<_> = keys.iter().map(|k| k.key.as_str()).collect();
        assert_eq!(names, ["a", "b", "c", "d", "e"]);
        assert!(!more);
        let (keys, more) = merge(runs, 3);
        assert_eq!(keys.len(), 3);
        assert!(more);
    }

    #[test]
    fn cursor_round_trip() {
        let c = encode_cursor("a/b c");
        assert_eq!(decode_cursor(&c).unwrap(), "a/b c");
        assert!(decode_cursor("!!!").is_err());
    }
}
