//! Redo: the physical effects of one writer batch, captured as the domains apply it, and
//! re-applied on recovery.
//!
//! Domains never touch the write transaction directly. [`ApplyCtx::table`](super::ApplyCtx::table)
//! hands out a [`LoggedTable`], which reads through to redb and records every insert, remove,
//! table open (which creates the table) and table drop, in order, into the batch's [`Redo`]. The
//! log record of the batch is those bytes; replaying them needs no clock, no randomness and no
//! re-validation, and applying them twice is the same as applying them once.
//!
//! Encoding (all integers little-endian), one op after another:
//!
//! ```text
//! 1 OPEN  id u16, key type u8, value type u8, name_len u16, name
//! 2 PUT   id u16, key_len u32, key, value_len u32, value
//! 3 DEL   id u16, key_len u32, key
//! 4 DROP  name_len u16, name
//! 5 NOTE  len u16, bytes
//! ```
//!
//! `id` numbers the tables opened in this record, from 0; a table dropped and opened again gets a
//! new id. Type codes are [`Logged::CODE`]. A NOTE changes nothing: it says what the physical
//! ops after it mean to a user (a KV put, a job claimed, retention dropping buckets), for the
//! change feed ([`crate::engine::feed`]); replay passes over it.

use redb::{AccessGuard, Key, Table, TableDefinition, TableHandle, Value, WriteTransaction};
use std::borrow::Borrow;
use std::cell::RefCell;
use std::collections::HashMap;
use std::ops::Deref;

const OP_OPEN: u8 = 1;
const OP_PUT: u8 = 2;
const OP_DEL: u8 = 3;
const OP_DROP: u8 = 4;
const OP_NOTE: u8 = 5;

/// The payload a cancelled record travels with to a copy of the log: one empty note, a redo of
/// no operation (a record is never empty: eight zero bytes read as the log's end).
pub const CANCELLED: &[u8] = &[OP_NOTE, 0, 0];

/// The largest note (its length is a u16).
pub const NOTE_BYTES_MAX: usize = u16::MAX as usize;

/// A redb key or value type the log can carry, with its code in the redo encoding.
pub trait Logged: Value + 'static {
    const CODE: u8;
}
impl Logged for &'static [u8] {
    const CODE: u8 = 1;
}
impl Logged for &'static str {
    const CODE: u8 = 2;
}
impl Logged for () {
    const CODE: u8 = 3;
}
impl Logged for u64 {
    const CODE: u8 = 4;
}

/// Buffer capacity a writer keeps between batches.
pub const REDO_KEEP_BYTES: usize = 1 << 20;

/// The redo bytes of the batch being applied.
#[derive(Debug, Default)]
pub struct Redo {
    bytes: Vec<u8>,
    /// Tables opened in this record (name → id), until dropped.
    open: HashMap<String, u16>,
    next_id: u16,
    /// Operations that changed something.
    changes: u64,
}

impl Redo {
    /// Starts a new record, keeping the buffer's capacity up to [`REDO_KEEP_BYTES`] (one huge
    /// batch does not pin its size for the life of the writer).
    pub fn clear(&mut self) {
        self.bytes.clear();
        self.bytes.shrink_to(REDO_KEEP_BYTES);
        self.open.clear();
        self.next_id = 0;
        self.changes = 0;
    }

    pub fn is_empty(&self) -> bool {
        self.changes == 0
    }

    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    fn table_id(&mut self, name: &str, k: u8, v: u8) -> u16 {
        if let Some(id) = self.open.get(name) {
            return *id;
        }
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        self.open.insert(name.to_string(), id);
        self.bytes.push(OP_OPEN);
        self.bytes.extend_from_slice(&id.to_le_bytes());
        self.bytes.push(k);
        self.bytes.push(v);
        put_str(&mut self.bytes, name);
        id
    }

    fn put(&mut self, id: u16, key: &[u8], value: &[u8]) {
        self.changes += 1;
        self.bytes.reserve(11 + key.len() + value.len());
        self.bytes.push(OP_PUT);
        self.bytes.extend_from_slice(&id.to_le_bytes());
        put_bytes(&mut self.bytes, key);
        put_bytes(&mut self.bytes, value);
    }

    /// Records a put whose value `fill` writes (exactly `len` bytes) straight into the record;
    /// returns where the value sits in [`Redo::bytes`].
    fn put_with(
        &mut self,
        id: u16,
        key: &[u8],
        len: usize,
        fill: impl FnOnce(&mut Vec<u8>),
    ) -> std::ops::Range<usize> {
        self.changes += 1;
        self.bytes.reserve(11 + key.len() + len);
        self.bytes.push(OP_PUT);
        self.bytes.extend_from_slice(&id.to_le_bytes());
        put_bytes(&mut self.bytes, key);
        self.bytes.extend_from_slice(&(len as u32).to_le_bytes());
        let start = self.bytes.len();
        fill(&mut self.bytes);
        // The length field must match what was written: fix it if `fill` wrote otherwise.
        let written = self.bytes.len() - start;
        if written != len {
            self.bytes[start - 4..start].copy_from_slice(&(written as u32).to_le_bytes());
        }
        start..self.bytes.len()
    }

    fn del(&mut self, id: u16, key: &[u8]) {
        self.changes += 1;
        self.bytes.push(OP_DEL);
        self.bytes.extend_from_slice(&id.to_le_bytes());
        put_bytes(&mut self.bytes, key);
    }

    /// Records a note (changes nothing; a record of notes alone is not logged). A note longer
    /// than [`NOTE_BYTES_MAX`] is cut there (notes carry names and small arguments).
    pub fn note(&mut self, note: &[u8]) -> usize {
        let note = &note[..note.len().min(NOTE_BYTES_MAX)];
        self.bytes.push(OP_NOTE);
        self.bytes.extend_from_slice(&(note.len() as u16).to_le_bytes());
        let at = self.bytes.len();
        self.bytes.extend_from_slice(note);
        at
    }

    /// Overwrites bytes of a note recorded earlier in this record (`at` is what
    /// [`Redo::note`] returned, `offset` within the note): for an operation whose note must
    /// say what it turned out to do. Bytes past the note's end are not written.
    pub fn patch_note(&mut self, at: usize, offset: usize, bytes: &[u8]) {
        let Some(len) = at
            .checked_sub(2)
            .and_then(|l| self.bytes.get(l..at))
            .map(|l| u16::from_le_bytes([l[0], l[1]]) as usize)
        else {
            return;
        };
        let end = (offset + bytes.len()).min(len);
        if offset < end {
            self.bytes[at + offset..at + end].copy_from_slice(&bytes[..end - offset]);
        }
    }

    fn drop_table(&mut self, name: &str) {
        self.changes += 1;
        self.open.remove(name);
        self.bytes.push(OP_DROP);
        put_str(&mut self.bytes, name);
    }
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    // Keys and values are bounded far below 4 GiB by redb itself (MAX_VALUE_LENGTH).
    out.extend_from_slice(&(b.len() as u32).to_le_bytes());
    out.extend_from_slice(b);
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    // redb table names are short; a longer one cannot be opened in the first place.
    out.extend_from_slice(&(s.len().min(u16::MAX as usize) as u16).to_le_bytes());
    out.extend_from_slice(&s.as_bytes()[..s.len().min(u16::MAX as usize)]);
}

/// A redb table of one of the types the log carries, kept open for the rest of the batch.
pub enum OpenTable<'a> {
    BytesBytes(Table<'a, &'static [u8], &'static [u8]>),
    BytesUnit(Table<'a, &'static [u8], ()>),
    BytesU64(Table<'a, &'static [u8], u64>),
    StrU64(Table<'a, &'static str, u64>),
}

impl OpenTable<'_> {
    fn name(&self) -> &str {
        match self {
            OpenTable::BytesBytes(t) => t.name(),
            OpenTable::BytesUnit(t) => t.name(),
            OpenTable::BytesU64(t) => t.name(),
            OpenTable::StrU64(t) => t.name(),
        }
    }
}

/// The redb table types a batch can keep open (one impl per [`OpenTable`] variant).
pub trait Cached<'a>: Sized {
    fn wrap(self) -> OpenTable<'a>;
    /// The table, if `t` is of this type (otherwise `t` is closed).
    fn unwrap(t: OpenTable<'a>) -> Option<Self>;
}

macro_rules! cached {
    ($variant:ident, $k:ty, $v:ty) => {
        impl<'a> Cached<'a> for Table<'a, $k, $v> {
            fn wrap(self) -> OpenTable<'a> {
                OpenTable::$variant(self)
            }
            fn unwrap(t: OpenTable<'a>) -> Option<Self> {
                match t {
                    OpenTable::$variant(t) => Some(t),
                    _ => None,
                }
            }
        }
    };
}
cached!(BytesBytes, &'static [u8], &'static [u8]);
cached!(BytesUnit, &'static [u8], ());
cached!(BytesU64, &'static [u8], u64);
cached!(StrU64, &'static str, u64);

/// Tables a batch has opened and handed back: opening a redb table decodes its definition
/// (about half of a small write's allocations), so a batch opens each table once.
pub type TableCache<'a> = RefCell<Vec<OpenTable<'a>>>;

/// A table opened inside a writer batch: reads go straight to redb (through `Deref`), every
/// mutation is also recorded in the batch's redo. Dropping it hands the table back to the
/// batch's cache.
pub struct LoggedTable<'c, 't, K: Logged + Key, V: Logged>
where
    Table<'t, K, V>: Cached<'t>,
{
    table: Option<Table<'t, K, V>>,
    id: u16,
    redo: &'c RefCell<Redo>,
    cache: &'c TableCache<'t>,
}

impl<'c, 't, K: Logged + Key, V: Logged> LoggedTable<'c, 't, K, V>
where
    Table<'t, K, V>: Cached<'t>,
{
    pub(crate) fn open(
        txn: &'t WriteTransaction,
        redo: &'c RefCell<Redo>,
        cache: &'c TableCache<'t>,
        def: TableDefinition<'_, K, V>,
    ) -> Result<Self, redb::Error> {
        let name = def.name();
        let cached = {
            let mut c = cache.borrow_mut();
            c.iter()
                .position(|t| t.name() == name)
                .map(|i| c.swap_remove(i))
        };
        // Same name but other types: the cached table is closed, and redb reports the mismatch
        // when the table is opened for real.
        let table = match cached.and_then(Table::<'t, K, V>::unwrap) {
            Some(t) => t,
            None => txn.open_table(def)?,
        };
        let id = redo.borrow_mut().table_id(name, K::CODE, V::CODE);
        Ok(Self {
            table: Some(table),
            id,
            redo,
            cache,
        })
    }

    fn inner(&mut self) -> &mut Table<'t, K, V> {
        match &mut self.table {
            Some(t) => t,
            None => unreachable!("a LoggedTable holds its table until it is dropped"),
        }
    }

    /// Inserts (or replaces) `key`; returns the old value.
    pub fn insert<'k, 'v>(
        &mut self,
        key: impl Borrow<K::SelfType<'k>>,
        value: impl Borrow<V::SelfType<'v>>,
    ) -> Result<Option<AccessGuard<'_, V>>, redb::Error> {
        self.redo.borrow_mut().put(
            self.id,
            K::as_bytes(key.borrow()).as_ref(),
            V::as_bytes(value.borrow()).as_ref(),
        );
        Ok(self.inner().insert(key, value)?)
    }

    /// Removes `key`; returns the old value. Removing an absent key records nothing.
    pub fn remove<'k>(
        &mut self,
        key: impl Borrow<K::SelfType<'k>>,
    ) -> Result<Option<AccessGuard<'_, V>>, redb::Error> {
        let (id, redo) = (self.id, self.redo);
        let old = self.inner().remove(key.borrow())?;
        if old.is_some() {
            redo.borrow_mut()
                .del(id, K::as_bytes(key.borrow()).as_ref());
        }
        Ok(old)
    }
}

impl<'t, K: Logged + Key> LoggedTable<'_, 't, K, &'static [u8]>
where
    Table<'t, K, &'static [u8]>: Cached<'t>,
{
    /// Inserts a byte value that `fill` encodes (`len` bytes) straight into the batch's log
    /// record, then into the table from there: the value is copied once, into redb's page.
    /// Returns the old value, like [`LoggedTable::insert`].
    pub fn insert_encoded<'k>(
        &mut self,
        key: impl Borrow<K::SelfType<'k>>,
        len: usize,
        fill: impl FnOnce(&mut Vec<u8>),
    ) -> Result<Option<AccessGuard<'_, &'static [u8]>>, redb::Error> {
        let (id, redo) = (self.id, self.redo);
        let range = redo
            .borrow_mut()
            .put_with(id, K::as_bytes(key.borrow()).as_ref(), len, fill);
        let r = redo.borrow();
        Ok(self.inner().insert(key, &r.bytes[range])?)
    }
}

impl<'t, K: Logged + Key, V: Logged> Deref for LoggedTable<'_, 't, K, V>
where
    Table<'t, K, V>: Cached<'t>,
{
    type Target = Table<'t, K, V>;
    fn deref(&self) -> &Self::Target {
        match &self.table {
            Some(t) => t,
            None => unreachable!("a LoggedTable holds its table until it is dropped"),
        }
    }
}

impl<'t, K: Logged + Key, V: Logged> Drop for LoggedTable<'_, 't, K, V>
where
    Table<'t, K, V>: Cached<'t>,
{
    fn drop(&mut self) {
        if let Some(t) = self.table.take() {
            self.cache.borrow_mut().push(t.wrap());
        }
    }
}

/// Drops a table inside a writer batch, recording it.
pub(crate) fn drop_table<K: Logged + Key, V: Logged>(
    txn: &WriteTransaction,
    redo: &RefCell<Redo>,
    cache: &TableCache<'_>,
    def: TableDefinition<'_, K, V>,
) -> Result<bool, redb::Error> {
    // An open table cannot be deleted: close it first if the batch kept it.
    cache.borrow_mut().retain(|t| t.name() != def.name());
    let existed = txn.delete_table(def)?;
    if existed {
        redo.borrow_mut().drop_table(def.name());
    }
    Ok(existed)
}

/// Why a redo payload could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("redo payload is malformed at byte {at}: {what}")]
    Malformed { at: usize, what: &'static str },
    #[error(transparent)]
    Storage(#[from] redb::Error),
}

struct Reader<'b> {
    b: &'b [u8],
    at: usize,
}

impl<'b> Reader<'b> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'b [u8], ReplayError> {
        let end = self.at.checked_add(n).filter(|e| *e <= self.b.len());
        let Some(end) = end else {
            return Err(ReplayError::Malformed { at: self.at, what });
        };
        let s = &self.b[self.at..end];
        self.at = end;
        Ok(s)
    }
    fn u8(&mut self, what: &'static str) -> Result<u8, ReplayError> {
        Ok(self.take(1, what)?[0])
    }
    fn u16(&mut self, what: &'static str) -> Result<u16, ReplayError> {
        let s = self.take(2, what)?;
        Ok(u16::from_le_bytes([s[0], s[1]]))
    }
    fn bytes(&mut self, what: &'static str) -> Result<&'b [u8], ReplayError> {
        let s = self.take(4, what)?;
        let n = u32::from_le_bytes([s[0], s[1], s[2], s[3]]) as usize;
        self.take(n, what)
    }
    fn name(&mut self) -> Result<&'b str, ReplayError> {
        let n = self.u16("table name length")? as usize;
        let s = self.take(n, "table name")?;
        std::str::from_utf8(s).map_err(|_| ReplayError::Malformed {
            at: self.at,
            what: "table name is not UTF-8",
        })
    }
}

/// One decoded redo operation; table ids resolved to the table's name and types.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Op<'b> {
    Open {
        name: &'b str,
        types: Types,
    },
    Put {
        name: &'b str,
        types: Types,
        key: &'b [u8],
        value: &'b [u8],
    },
    Del {
        name: &'b str,
        types: Types,
        key: &'b [u8],
    },
    Drop {
        name: &'b str,
    },
    Note(&'b [u8]),
}

/// Decodes a whole redo payload and checks it: known ops and table types, every table id
/// opened earlier in the record, and bytes that redb's decoders can take (a u64 is 8 bytes, a
/// str is UTF-8) — so applying it can only fail in storage, never half-way on bad bytes.
fn decode(payload: &[u8]) -> Result<Vec<Op<'_>>, ReplayError> {
    let mut r = Reader { b: payload, at: 0 };
    let mut tables: HashMap<u16, (&str, Types)> = HashMap::new();
    let mut ops = Vec::new();
    while r.at < payload.len() {
        let bad = |at, what| ReplayError::Malformed { at, what };
        let op = match r.u8("op")? {
            OP_OPEN => {
                let id = r.u16("table id")?;
                let (k, v) = (r.u8("key type")?, r.u8("value type")?);
                let types = type_pair(k, v).ok_or(bad(r.at, "unknown table types"))?;
                let name = r.name()?;
                tables.insert(id, (name, types));
                Op::Open { name, types }
            }
            OP_PUT => {
                let id = r.u16("table id")?;
                let (key, value) = (r.bytes("key")?, r.bytes("value")?);
                let (name, types) = opened(&tables, id, r.at)?;
                check_shape(types, key, Some(value)).map_err(|what| bad(r.at, what))?;
                Op::Put {
                    name,
                    types,
                    key,
                    value,
                }
            }
            OP_DEL => {
                let id = r.u16("table id")?;
                let key = r.bytes("key")?;
                let (name, types) = opened(&tables, id, r.at)?;
                check_shape(types, key, None).map_err(|what| bad(r.at, what))?;
                Op::Del { name, types, key }
            }
            OP_DROP => {
                let name = r.name()?;
                tables.retain(|_, (n, _)| *n != name);
                Op::Drop { name }
            }
            OP_NOTE => {
                let n = r.u16("note length")? as usize;
                Op::Note(r.take(n, "note")?)
            }
            _ => return Err(bad(r.at - 1, "unknown op")),
        };
        ops.push(op);
    }
    Ok(ops)
}

/// The table a record opened as `id`.
fn opened<'b>(
    tables: &HashMap<u16, (&'b str, Types)>,
    id: u16,
    at: usize,
) -> Result<(&'b str, Types), ReplayError> {
    tables.get(&id).copied().ok_or(ReplayError::Malformed {
        at,
        what: "op names a table the record did not open",
    })
}

/// Checks that a redo payload decodes, without applying it (`shardbox check`, fuzzing); the
/// count of operations that change something (notes are not).
pub fn validate(payload: &[u8]) -> Result<u64, ReplayError> {
    Ok(decode(payload)?
        .iter()
        .filter(|op| !matches!(op, Op::Note(_)))
        .count() as u64)
}

/// The operations of a redo payload, in order (the change feed reads them).
pub(crate) fn ops(payload: &[u8]) -> Result<Vec<Op<'_>>, ReplayError> {
    decode(payload)
}

/// The table kinds the log knows, by (key, value) type codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Types {
    BytesBytes,
    BytesUnit,
    BytesU64,
    StrU64,
}

fn type_pair(k: u8, v: u8) -> Option<Types> {
    const BYTES: u8 = <&[u8] as Logged>::CODE;
    const STR: u8 = <&str as Logged>::CODE;
    const UNIT: u8 = <() as Logged>::CODE;
    const U64: u8 = <u64 as Logged>::CODE;
    match (k, v) {
        (BYTES, BYTES) => Some(Types::BytesBytes),
        (BYTES, UNIT) => Some(Types::BytesUnit),
        (BYTES, U64) => Some(Types::BytesU64),
        (STR, U64) => Some(Types::StrU64),
        _ => None,
    }
}

fn put_typed<K: Logged + Key, V: Logged>(
    txn: &WriteTransaction,
    name: &str,
    key: &[u8],
    value: Option<&[u8]>,
) -> Result<(), redb::Error> {
    let mut t = txn.open_table(TableDefinition::<K, V>::new(name))?;
    match value {
        Some(v) => {
            t.insert(K::from_bytes(key), V::from_bytes(v))?;
        }
        None => {
            t.remove(K::from_bytes(key))?;
        }
    }
    Ok(())
}

fn open_typed(txn: &WriteTransaction, name: &str, types: Types) -> Result<(), redb::Error> {
    match types {
        Types::BytesBytes => drop(txn.open_table(TableDefinition::<&[u8], &[u8]>::new(name))?),
        Types::BytesUnit => drop(txn.open_table(TableDefinition::<&[u8], ()>::new(name))?),
        Types::BytesU64 => drop(txn.open_table(TableDefinition::<&[u8], u64>::new(name))?),
        Types::StrU64 => drop(txn.open_table(TableDefinition::<&str, u64>::new(name))?),
    }
    Ok(())
}

/// redb's decoders assume well-formed bytes: a u64 is 8 bytes, a str is UTF-8.
fn check_shape(types: Types, key: &[u8], value: Option<&[u8]>) -> Result<(), &'static str> {
    if matches!(types, Types::BytesU64 | Types::StrU64) && value.is_some_and(|v| v.len() != 8) {
        return Err("a u64 value is not 8 bytes");
    }
    if types == Types::StrU64 && std::str::from_utf8(key).is_err() {
        return Err("a str key is not UTF-8");
    }
    Ok(())
}

fn write_typed(
    txn: &WriteTransaction,
    name: &str,
    types: Types,
    key: &[u8],
    value: Option<&[u8]>,
) -> Result<(), redb::Error> {
    match types {
        Types::BytesBytes => put_typed::<&[u8], &[u8]>(txn, name, key, value),
        Types::BytesUnit => put_typed::<&[u8], ()>(txn, name, key, value),
        Types::BytesU64 => put_typed::<&[u8], u64>(txn, name, key, value),
        Types::StrU64 => put_typed::<&str, u64>(txn, name, key, value),
    }
}

/// Applies a redo payload to `txn`. The payload was checked by its record's crc; a malformed one
/// is still an error, never a panic, and applies nothing (it is decoded whole first).
pub fn apply(txn: &WriteTransaction, payload: &[u8]) -> Result<u64, ReplayError> {
    let ops = decode(payload)?;
    let mut applied = 0;
    for op in &ops {
        if !matches!(op, Op::Note(_)) {
            applied += 1;
        }
        match *op {
            Op::Open { name, types } => open_typed(txn, name, types)?,
            Op::Put {
                name,
                types,
                key,
                value,
            } => write_typed(txn, name, types, key, Some(value))?,
            Op::Del { name, types, key } => write_typed(txn, name, types, key, None)?,
            Op::Drop { name } => {
                txn.delete_table(TableDefinition::<&[u8], &[u8]>::new(name))
                    .map_err(redb::Error::from)?;
            }
            Op::Note(_) => {}
        }
    }
    Ok(applied)
}

#[cfg(test)]
mod tests {
    use super::*;
    use redb::{ReadableDatabase, ReadableTable, ReadableTableMetadata};

    const T: TableDefinition<&[u8], &[u8]> = TableDefinition::new("t");
    const U: TableDefinition<&[u8], ()> = TableDefinition::new("u");
    const M: TableDefinition<&str, u64> = TableDefinition::new("m");

    fn record(db: &redb::Database) -> Vec<u8> {
        let redo = RefCell::new(Redo::default());
        let txn = db.begin_write().unwrap();
        let cache = TableCache::default();
        redo.borrow_mut().note(b"a note: replay passes over it");
        {
            let mut t = LoggedTable::open(&txn, &redo, &cache, T).unwrap();
            t.insert(b"a".as_slice(), b"1".as_slice()).unwrap();
            t.insert(b"b".as_slice(), b"2".as_slice()).unwrap();
            assert!(t.remove(b"a".as_slice()).unwrap().is_some());
            assert!(t.remove(b"zz".as_slice()).unwrap().is_none());
            let mut u = LoggedTable::open(&txn, &redo, &cache, U).unwrap();
            u.insert(b"x".as_slice(), ()).unwrap();
            let mut m = LoggedTable::open(&txn, &redo, &cache, M).unwrap();
            m.insert("rev", 7u64).unwrap();
        }
        LoggedTable::open(&txn, &redo, &cache, T)
            .unwrap()
            .insert_encoded(b"e".as_slice(), 3, |out| out.extend_from_slice(b"enc"))
            .unwrap();
        // Reopened from the batch's cache: still recorded.
        LoggedTable::open(&txn, &redo, &cache, T)
            .unwrap()
            .insert(b"c".as_slice(), b"3".as_slice())
            .unwrap();
        let d: TableDefinition<&[u8], &[u8]> = TableDefinition::new("gone");
        LoggedTable::open(&txn, &redo, &cache, d)
            .unwrap()
            .insert(b"k".as_slice(), b"v".as_slice())
            .unwrap();
        assert!(drop_table(&txn, &redo, &cache, d).unwrap());
        let e: TableDefinition<&[u8], &[u8]> = TableDefinition::new("empty");
        LoggedTable::open(&txn, &redo, &cache, e).unwrap();
        drop(cache);
        txn.commit().unwrap();
        let bytes = redo.borrow().bytes().to_vec();
        bytes
    }

    fn dump(db: &redb::Database) -> Vec<String> {
        let txn = db.begin_read().unwrap();
        let mut out = Vec::new();
        for h in txn.list_tables().unwrap() {
            out.push(format!("table {}", h.name()));
        }
        for (k, v) in txn
            .open_table(T)
            .unwrap()
            .iter()
            .unwrap()
            .map(|r| r.unwrap())
        {
            out.push(format!("t {:?}={:?}", k.value(), v.value()));
        }
        out.push(format!("u {}", txn.open_table(U).unwrap().len().unwrap()));
        out.push(format!(
            "m {:?}",
            txn.open_table(M)
                .unwrap()
                .get("rev")
                .unwrap()
                .map(|g| g.value())
        ));
        out.sort();
        out
    }

    #[test]
    fn replay_reproduces_the_live_state_and_is_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let live = redb::Database::create(dir.path().join("live")).unwrap();
        let payload = record(&live);
        assert_eq!(validate(&payload).unwrap(), 14);
        let copy = redb::Database::create(dir.path().join("copy")).unwrap();
        for _ in 0..2 {
            let txn = copy.begin_write().unwrap();
            apply(&txn, &payload).unwrap();
            txn.commit().unwrap();
            assert_eq!(dump(&live), dump(&copy));
        }
    }

    #[test]
    fn malformed_payloads_are_errors_and_apply_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let live = redb::Database::create(dir.path().join("live")).unwrap();
        let payload = record(&live);
        let db = redb::Database::create(dir.path().join("x")).unwrap();
        for cut in 0..payload.len() {
            let txn = db.begin_write().unwrap();
            if validate(&payload[..cut]).is_err() {
                assert!(apply(&txn, &payload[..cut]).is_err());
            }
            txn.abort().unwrap();
        }
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        for _ in 0..2000 {
            let mut p = payload.clone();
            let i = rng.random_range(0..p.len());
            p[i] = rng.random();
            let txn = db.begin_write().unwrap();
            let _ = apply(&txn, &p);
            txn.abort().unwrap();
        }
    }
}
