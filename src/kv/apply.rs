//! KV mutations as the shard writer applies them.
//!
//! Every function checks its preconditions before it mutates anything, so a failed precondition
//! leaves the batch's transaction untouched: an [`OpError::Rejected`] (a `?` on a [`KvError`])
//! may only be returned before the first write. An [`OpError::Storage`] (a `?` on a redb error)
//! aborts the whole batch; a rejection is this operation's own outcome and the batch goes on.

use super::{
    display_key, feed, BatchOp, BatchOpResult, Cond, PutOptions, PutResult, KV, KV_EXPIRY,
};
use crate::engine::codec::{self, Header};
use crate::engine::EngineError;
use crate::engine::{ApplyCtx, LoggedTable, OpError};
use crate::kv::{KvError, Precondition};
use redb::ReadableTable;
use std::collections::HashMap;

type Res<T> = Result<T, OpError<KvError>>;
type KvTable<'c, 't> = LoggedTable<'c, 't, &'static [u8], &'static [u8]>;
type ExpiryTable<'c, 't> = LoggedTable<'c, 't, &'static [u8], ()>;

/// Key of the expiry index: `expires_at_ms` big-endian (so the index sorts by time) then the key.
pub(super) use crate::engine::expiry::key as expiry_key;

/// The stored header of `sk`, expired or not; rejected if the record is corrupt.
fn header_of(table: &KvTable<'_, '_>, shard: usize, sk: &[u8]) -> Res<Option<Header>> {
    let Some(guard) = table.get(sk)? else {
        return Ok(None);
    };
    let header =
        codec::decode_header(guard.value()).map_err(|e| corrupt(shard, sk, e.to_string()))?;
    Ok(Some(header))
}

fn corrupt(shard: usize, sk: &[u8], detail: String) -> KvError {
    crate::base::metrics::CORRUPT_RECORDS.inc();
    KvError::Engine(EngineError::Corrupt {
        shard,
        key: display_key(sk),
        detail,
    })
}

/// Checks a precondition against the live revision (`None` = absent or expired).
fn check(cond: Cond, live: Option<u64>) -> Result<(), KvError> {
    match (cond, live) {
        (Cond::None, _) => Ok(()),
        (Cond::IfRevision(want), Some(have)) if want == have => Ok(()),
        (Cond::IfRevision(want), Some(have)) => Err(KvError::PreconditionFailed(
            Precondition::RevisionMismatch { have, want },
        )),
        (Cond::IfRevision(want), None) => Err(KvError::PreconditionFailed(Precondition::Missing {
            expected: Some(want),
        })),
        (Cond::IfExists, Some(_)) => Ok(()),
        (Cond::IfExists, None) => Err(KvError::PreconditionFailed(Precondition::Missing {
            expected: None,
        })),
        (Cond::IfAbsent, None) => Ok(()),
        (Cond::IfAbsent, Some(have)) => {
            Err(KvError::PreconditionFailed(Precondition::Exists { have }))
        }
    }
}

/// Writes a value over `old` (whose expiry entry is replaced). Returns the new revision.
#[allow(clippy::too_many_arguments)]
fn write_value(
    ctx: &mut ApplyCtx<'_, '_>,
    kv: &mut KvTable<'_, '_>,
    exp: &mut ExpiryTable<'_, '_>,
    sk: &[u8],
    old: Option<&Header>,
    payload: &[u8],
    expires_at_ms: Option<u64>,
    content_type: Option<&str>,
) -> Result<u64, redb::Error> {
    let revision = ctx.next_revision();
    kv.insert_encoded(sk, codec::encoded_len(content_type, payload.len()), |out| {
        codec::encode_into(out, revision, expires_at_ms, content_type, payload)
    })?;
    replace_expiry(exp, sk, old, expires_at_ms)?;
    Ok(revision)
}

/// Moves `sk`'s expiry index entry from the old value's expiry to the new one.
fn replace_expiry(
    exp: &mut ExpiryTable<'_, '_>,
    sk: &[u8],
    old: Option<&Header>,
    expires_at_ms: Option<u64>,
) -> Result<(), redb::Error> {
    if let Some(t) = old.and_then(|h| h.expires_at_ms) {
        if Some(t) != expires_at_ms {
            exp.remove(expiry_key(t, sk).as_slice())?;
        }
    }
    if let Some(t) = expires_at_ms {
        exp.insert(expiry_key(t, sk).as_slice(), ())?;
    }
    Ok(())
}

fn remove_value(
    kv: &mut KvTable<'_, '_>,
    exp: &mut ExpiryTable<'_, '_>,
    sk: &[u8],
    old: Option<&Header>,
) -> Result<(), redb::Error> {
    kv.remove(sk)?;
    if let Some(t) = old.and_then(|h| h.expires_at_ms) {
        exp.remove(expiry_key(t, sk).as_slice())?;
    }
    Ok(())
}

pub(super) fn put(
    ctx: &mut ApplyCtx<'_, '_>,
    sk: &[u8],
    value: &[u8],
    opts: &PutOptions,
) -> Res<PutResult> {
    feed::note(ctx, feed::PUT);
    let mut kv = ctx.table(KV)?;
    let mut exp = ctx.table(KV_EXPIRY)?;
    if opts.cond == Cond::None {
        return Ok(put_unconditional(ctx, &mut kv, &mut exp, sk, value, opts)?);
    }
    // No precondition can be judged against a corrupt record.
    let old = header_of(&kv, ctx.shard, sk)?;
    let live = old.as_ref().filter(|h| !h.is_expired(ctx.now_ms));
    check(opts.cond, live.map(|h| h.revision))?;
    let created = live.is_none();
    let expires = opts.ttl_ms.map(|t| ctx.now_ms.saturating_add(t));
    let revision = write_value(
        ctx,
        &mut kv,
        &mut exp,
        sk,
        old.as_ref(),
        value,
        expires,
        opts.content_type.as_deref(),
    )?;
    Ok(PutResult { revision, created })
}

/// A put without a precondition: one tree walk, the insert itself, which hands back the old
/// value for the expiry index and the created flag. A corrupt old record is simply replaced
/// (that repairs it).
fn put_unconditional(
    ctx: &mut ApplyCtx<'_, '_>,
    kv: &mut KvTable<'_, '_>,
    exp: &mut ExpiryTable<'_, '_>,
    sk: &[u8],
    value: &[u8],
    opts: &PutOptions,
) -> Result<PutResult, redb::Error> {
    let revision = ctx.next_revision();
    let expires = opts.ttl_ms.map(|t| ctx.now_ms.saturating_add(t));
    let ct = opts.content_type.as_deref();
    let old = kv
        .insert_encoded(sk, codec::encoded_len(ct, value.len()), |out| {
            codec::encode_into(out, revision, expires, ct, value)
        })?
        .and_then(|g| codec::decode_header(g.value()).ok());
    replace_expiry(exp, sk, old.as_ref(), expires)?;
    let created = old.is_none_or(|h| h.is_expired(ctx.now_ms));
    Ok(PutResult { revision, created })
}

pub(super) fn delete(ctx: &mut ApplyCtx<'_, '_>, sk: &[u8], cond: Cond) -> Res<u64> {
    feed::note(ctx, feed::DELETE);
    let mut kv = ctx.table(KV)?;
    let mut exp = ctx.table(KV_EXPIRY)?;
    let old = header_of(&kv, ctx.shard, sk)?;
    let Some(live) = old.filter(|h| !h.is_expired(ctx.now_ms)) else {
        return Err(KvError::NotFound.into());
    };
    check(cond, Some(live.revision))?;
    remove_value(&mut kv, &mut exp, sk, Some(&live))?;
    Ok(live.revision)
}

pub(super) fn incr(
    ctx: &mut ApplyCtx<'_, '_>,
    sk: &[u8],
    by: i64,
    ttl_ms: Option<u64>,
) -> Res<(i64, u64)> {
    feed::note(ctx, feed::INCR);
    let mut kv = ctx.table(KV)?;
    let mut exp = ctx.table(KV_EXPIRY)?;
    let current = match kv.get(sk)? {
        None => None,
        Some(guard) => match codec::decode(guard.value()) {
            Ok((h, payload)) => Some((h, payload.to_vec())),
            Err(e) => return Err(corrupt(ctx.shard, sk, e.to_string()).into()),
        },
    };
    let (header, payload) = match current {
        Some((h, p)) if !h.is_expired(ctx.now_ms) => (h, p),
        // Absent or expired: start over (replacing an expired value's expiry entry).
        other => {
            let old = other.map(|(h, _)| h);
            return incr_create(ctx, &mut kv, &mut exp, sk, by, ttl_ms, old.as_ref());
        }
    };
    let Some(value) = parse_counter(&payload) else {
        return Err(KvError::NotACounter.into());
    };
    let Some(next) = value.checked_add(by) else {
        return Err(KvError::Overflow { value, by }.into());
    };
    let revision = write_value(
        ctx,
        &mut kv,
        &mut exp,
        sk,
        Some(&header),
        next.to_string().as_bytes(),
        header.expires_at_ms,
        header.content_type.as_deref(),
    )?;
    Ok((next, revision))
}

fn incr_create(
    ctx: &mut ApplyCtx<'_, '_>,
    kv: &mut KvTable<'_, '_>,
    exp: &mut ExpiryTable<'_, '_>,
    sk: &[u8],
    by: i64,
    ttl_ms: Option<u64>,
    old: Option<&Header>,
) -> Res<(i64, u64)> {
    let expires = ttl_ms.map(|t| ctx.now_ms.saturating_add(t));
    let revision = write_value(
        ctx,
        kv,
        exp,
        sk,
        old,
        by.to_string().as_bytes(),
        expires,
        Some("text/plain"),
    )?;
    Ok((by, revision))
}

/// A counter is a value that is the ASCII decimal form of an i64.
fn parse_counter(payload: &[u8]) -> Option<i64> {
    if payload.is_empty() || payload.len() > 20 {
        return None;
    }
    std::str::from_utf8(payload).ok()?.parse().ok()
}

#[derive(Clone, Copy)]
enum Seen {
    Absent,
    Present(u64),
    /// Written earlier in this batch: its revision is not known to the client.
    Written,
}

/// One shard's group of a batch write: all operations or none.
pub(super) fn batch(
    ctx: &mut ApplyCtx<'_, '_>,
    group: &[(usize, Vec<u8>, BatchOp)],
) -> Res<Vec<BatchOpResult>> {
    feed::note(ctx, feed::BATCH);
    let mut kv = ctx.table(KV)?;
    let mut exp = ctx.table(KV_EXPIRY)?;
    // Phase 1: judge every precondition against the state the earlier ops would leave.
    let mut headers: HashMap<&[u8], Option<Header>> = HashMap::new();
    let mut seen: HashMap<&[u8], Seen> = HashMap::new();
    let mut failures: Vec<Option<(usize, Precondition)>> = vec![None; group.len()];
    let mut any_failed = false;
    for (n, (i, sk, op)) in group.iter().enumerate() {
        if !headers.contains_key(sk.as_slice()) {
            let h = header_of(&kv, ctx.shard, sk)?;
            let state = match &h {
                Some(h) if !h.is_expired(ctx.now_ms) => Seen::Present(h.revision),
                _ => Seen::Absent,
            };
            seen.insert(sk.as_slice(), state);
            headers.insert(sk.as_slice(), h);
        }
        let state = seen[sk.as_slice()];
        let (if_revision, after) = match op {
            BatchOp::Put { if_revision, .. } => (*if_revision, Seen::Written),
            BatchOp::Delete { if_revision, .. } => (*if_revision, Seen::Absent),
        };
        if let Some(want) = if_revision {
            let ok = matches!(state, Seen::Present(have) if have == want);
            if !ok {
                let reason = match state {
                    Seen::Present(have) => Precondition::RevisionMismatch { have, want },
                    Seen::Absent => Precondition::Missing {
                        expected: Some(want),
                    },
                    Seen::Written => Precondition::WrittenInBatch,
                };
                failures[n] = Some((*i, reason));
                any_failed = true;
            }
        }
        seen.insert(sk.as_slice(), after);
    }
    if any_failed {
        return Ok(failures
            .into_iter()
            .map(|f| match f {
                Some((op, reason)) => BatchOpResult::PreconditionFailed { op, reason },
                None => BatchOpResult::Aborted,
            })
            .collect());
    }
    // Phase 2: apply. `live` tracks the current header as earlier ops change it.
    let mut results = Vec::with_capacity(group.len());
    for (_, sk, op) in group {
        let old = headers.get(sk.as_slice()).cloned().flatten();
        let live = old.as_ref().filter(|h| !h.is_expired(ctx.now_ms)).is_some();
        match op {
            BatchOp::Put { value, ttl_ms, .. } => {
                let expires = ttl_ms.map(|t| ctx.now_ms.saturating_add(t));
                let revision = write_value(
                    ctx,
                    &mut kv,
                    &mut exp,
                    sk,
                    old.as_ref(),
                    value,
                    expires,
                    None,
                )?;
                headers.insert(
                    sk.as_slice(),
                    Some(Header {
                        revision,
                        expires_at_ms: expires,
                        content_type: None,
                        crc32: 0,
                        len: 0,
                    }),
                );
                results.push(BatchOpResult::Put(PutResult {
                    revision,
                    created: !live,
                }));
            }
            BatchOp::Delete { .. } => {
                if old.is_some() {
                    remove_value(&mut kv, &mut exp, sk, old.as_ref())?;
                }
                headers.insert(sk.as_slice(), None);
                results.push(BatchOpResult::Deleted { existed: live });
            }
        }
    }
    Ok(results)
}

/// Deletes up to `max` keys starting with `prefix`; returns (live keys deleted, more remain).
pub(super) fn delete_prefix(
    ctx: &mut ApplyCtx<'_, '_>,
    prefix: &[u8],
    max: usize,
) -> Res<(u64, bool)> {
    feed::note(ctx, feed::PREFIX);
    let mut kv = ctx.table(KV)?;
    let mut exp = ctx.table(KV_EXPIRY)?;
    let mut victims: Vec<(Vec<u8>, Option<Header>)> = Vec::new();
    let mut more = false;
    for item in kv.range(prefix..)? {
        let (k, v) = item?;
        let key = k.value();
        if !key.starts_with(prefix) {
            break;
        }
        if victims.len() == max {
            more = true;
            break;
        }
        victims.push((key.to_vec(), codec::decode_header(v.value()).ok()));
    }
    let mut deleted = 0;
    for (sk, header) in &victims {
        if header.as_ref().is_none_or(|h| !h.is_expired(ctx.now_ms)) {
            deleted += 1;
        }
        remove_value(&mut kv, &mut exp, sk, header.as_ref())?;
    }
    Ok((deleted, more))
}

/// Deletes up to `max` keys whose expiry has passed, walking the expiry index in time order.
/// Returns how many index entries it consumed.
pub(super) fn sweep(ctx: &mut ApplyCtx<'_, '_>, max: usize) -> Result<usize, redb::Error> {
    feed::note(ctx, feed::EXPIRED);
    let mut kv = ctx.table(KV)?;
    let mut exp = ctx.table(KV_EXPIRY)?;
    let end = ctx.now_ms.saturating_add(1).to_be_bytes();
    let mut due: Vec<Vec<u8>> = Vec::new();
    for item in exp.range(..end.as_slice())?.take(max) {
        let (k, _) = item?;
        due.push(k.value().to_vec());
    }
    for ek in &due {
        if ek.len() < 8 {
            exp.remove(ek.as_slice())?;
            continue;
        }
        let mut t = [0u8; 8];
        t.copy_from_slice(&ek[..8]);
        let t = u64::from_be_bytes(t);
        let sk = &ek[8..];
        // Only delete if the record still carries this expiry: a later put may have changed it.
        let still_due = match kv.get(sk)? {
            Some(g) => codec::decode_header(g.value())
                .map(|h| h.expires_at_ms == Some(t) && h.is_expired(ctx.now_ms))
                .unwrap_or(false),
            None => false,
        };
        if still_due {
            kv.remove(sk)?;
        }
        exp.remove(ek.as_slice())?;
    }
    Ok(due.len())
}
