//! Fill leases: one caller at a time fetches a missing or stale key from the origin while the
//! others wait or serve stale; a failed refresh is reported with the lease token.

use super::*;

pub(super) struct FillLease {
    pub(super) token: String,
    pub(super) granted_at_ms: u64,
    pub(super) expires_at_ms: u64,
    pub(super) done: Arc<tokio::sync::Notify>,
}

pub(super) struct WaiterSlot<'a>(pub(super) &'a AtomicUsize);
impl Drop for WaiterSlot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A 128-bit random lease token, hex.
pub(super) fn new_token() -> String {
    let v: u128 = rand::random();
    format!("{v:032x}")
}

impl Cache {
    /// [`Lease::Pending`] while someone holds a live fill lease of `key`, else [`Lease::None`]
    /// (nothing taken).
    pub(super) fn lease_pending(&self, key: &[u8], now: u64) -> Lease {
        let leases = self.leases.lock().unwrap_or_else(|p| p.into_inner());
        match leases.get(key) {
            Some(l) if l.expires_at_ms > now => Lease::Pending,
            _ => Lease::None,
        }
    }

    /// Grants the fill lease of `key` unless someone holds a live one. With `on_miss`, returns
    /// `None` instead when the memory tier meanwhile holds a fresh value (checked under the
    /// lease lock, which a write's end of lease also takes).
    pub(super) fn try_lease(&self, ns: &str, key: &[u8], now: u64, on_miss: bool) -> Option<Lease> {
        let mut leases = self.leases.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(l) = leases.get(key) {
            if l.expires_at_ms > now {
                return Some(Lease::Pending);
            }
            // Expired: whoever waited on it retries.
            l.done.notify_waiters();
            leases.remove(key);
        }
        if leases.len() >= self.settings.fill_leases_max {
            // Sweep the full table only once its earliest lease can have expired, so a miss
            // under overload costs O(1), not a walk of `fill_leases_max` entries.
            if now < self.leases_swept_until.load(Ordering::Relaxed) {
                return Some(Lease::Unavailable);
            }
            let mut earliest = u64::MAX;
            leases.retain(|_, l| {
                let live = l.expires_at_ms > now;
                if live {
                    earliest = earliest.min(l.expires_at_ms);
                } else {
                    l.done.notify_waiters();
                }
                live
            });
            if leases.len() >= self.settings.fill_leases_max {
                self.leases_swept_until.store(earliest, Ordering::Relaxed);
                return Some(Lease::Unavailable);
            }
        }
        if on_miss {
            if let Some(cur) = self.hybrid.memory().get(key) {
                let e = cur.value();
                if now < e.expires_at_ms
                    && self.generations.is_current(ns, e.ns_generation, &e.tags)
                {
                    return None;
                }
            }
        }
        let token = new_token();
        leases.insert(
            key.to_vec(),
            FillLease {
                token: token.clone(),
                granted_at_ms: now,
                expires_at_ms: now + self.settings.fill_lease_ms,
                done: Arc::new(tokio::sync::Notify::new()),
            },
        );
        drop(leases);
        self.count(ns, |c| &c.fills_granted);
        Some(Lease::Granted(token))
    }

    /// Ends the lease of `key` (if `token` is given, only when it matches) and wakes its
    /// waiters. Returns the lease's grant time when one was ended.
    pub(super) fn end_lease(&self, key: &[u8], token: Option<&str>) -> Option<u64> {
        let mut leases = self.leases.lock().unwrap_or_else(|p| p.into_inner());
        let matches = match (leases.get(key), token) {
            (None, _) => false,
            (Some(_), None) => true,
            (Some(l), Some(t)) => l.token == t,
        };
        if !matches {
            return None;
        }
        let l = leases.remove(key)?;
        l.done.notify_waiters();
        Some(l.granted_at_ms)
    }

    /// When `token` is the live lease of `key`, the time it was granted.
    pub(super) fn live_lease(&self, key: &[u8], token: &str, now: u64) -> Option<u64> {
        let leases = self.leases.lock().unwrap_or_else(|p| p.into_inner());
        leases
            .get(key)
            .filter(|l| l.token == token && l.expires_at_ms > now)
            .map(|l| l.granted_at_ms)
    }

    /// A refresh failed: within its stale-if-error window the stale value keeps being served.
    /// Returns whether a stale value is being served.
    pub async fn fill_error(&self, ns: &str, key: &str, token: &str) -> Result<bool, CacheError> {
        crate::base::names::validate_name("namespace", ns)?;
        crate::base::names::validate_key(key)?;
        let k = cache_key(ns, key);
        let now = self.now();
        if self.live_lease(&k, token, now).is_none() {
            return Err(CacheError::LeaseInvalid(LeaseUse::FillError));
        }
        self.count(ns, |c| &c.fill_errors);
        let got = self
            .hybrid
            .get(&k)
            .await
            .map_err(|e| CacheError::Unavailable(format!("cache read failed: {e}")))?;
        let mut serving = false;
        if let Some(entry) = got {
            if self
                .generations
                .is_current(ns, entry.ns_generation, &entry.tags)
                && now < entry.stale_if_error_until_ms
            {
                let mut marked = entry.value().clone();
                marked.refresh_failed = true;
                let _g = self.key_lock(&k);
                // Only mark the value the failed refresh was for, not one written since.
                let unchanged = self
                    .hybrid
                    .memory()
                    .get(&k)
                    .is_some_and(|cur| same_write(cur.value(), entry.value()));
                if unchanged {
                    self.hybrid.insert(k.clone(), marked);
                    serving = true;
                }
                drop(entry);
            }
        }
        self.end_lease(&k, Some(token));
        Ok(serving)
    }
}
