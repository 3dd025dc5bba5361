//! Dumps every table of every shard of a stopped data directory as raw bytes, for comparing two
//! stores exactly (replay against live state).

use redb::{ReadableDatabase, ReadableTable, TableDefinition, TableHandle};
use std::collections::BTreeMap;
use std::path::Path;

/// (shard, table) → every (key, value), as bytes.
pub type Dump = BTreeMap<(usize, String), Vec<(Vec<u8>, Vec<u8>)>>;

/// The rows of `name` if its key and value types are `K`, `V`.
fn rows<K: redb::Key + 'static, V: redb::Value + 'static>(
    txn: &redb::ReadTransaction,
    name: &str,
) -> Option<Vec<(Vec<u8>, Vec<u8>)>> {
    let t = match txn.open_table(TableDefinition::<K, V>::new(name)) {
        Ok(t) => t,
        Err(redb::TableError::TableTypeMismatch { .. }) => return None,
        Err(e) => panic!("open {name}: {e}"),
    };
    let rows = t
        .iter()
        .unwrap()
        .map(|r| {
            let (k, v) = r.unwrap();
            let (kv, vv) = (k.value(), v.value());
            let kb = K::as_bytes(&kv).as_ref().to_vec();
            let vb = V::as_bytes(&vv).as_ref().to_vec();
            (kb, vb)
        })
        .collect();
    Some(rows)
}

/// Every table of every shard file under `dir/shards`. `skip_meta_lsn` leaves out the META
/// row holding the applied LSN (replay and the live store may differ only there).
pub fn dump(dir: &Path, skip_meta_lsn: bool) -> Dump {
    let mut out = Dump::new();
    let mut id = 0;
    loop {
        let path = dir.join("shards").join(format!("{id:03}.redb"));
        if !path.exists() {
            break;
        }
        let db = redb::Builder::new()
            .open_read_only(&path)
            .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
        let txn = db.begin_read().unwrap();
        for h in txn.list_tables().unwrap() {
            let name = h.name().to_string();
            // Every (key, value) type pair shardbox's tables use, tried in turn.
            let mut r = rows::<&[u8], &[u8]>(&txn, &name)
                .or_else(|| rows::<&[u8], ()>(&txn, &name))
                .or_else(|| rows::<&[u8], u64>(&txn, &name))
                .or_else(|| rows::<&str, u64>(&txn, &name))
                .unwrap_or_else(|| panic!("table {name} has a type pair the dump does not know"));
            if skip_meta_lsn && name == "meta" {
                r.retain(|(k, _)| k.as_slice() != b"lsn");
            }
            out.insert((id, name), r);
        }
        id += 1;
    }
    out
}
