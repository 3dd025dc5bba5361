//! Fault injection for tests: named points in the code that a test can arm to panic, fail or
//! stall, so failure paths are exercised for real instead of being mocked.
//!
//! Points are process-wide. Unarmed, a point costs one relaxed atomic load. A test that arms a
//! point lives in its own test binary (or disarms before it returns), because the other tests
//! of the same binary share the process.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// What an armed point does when the code reaches it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Panic with the point's name.
    Panic,
    /// Sleep this long, then carry on (widens race windows in tests).
    Delay(Duration),
    /// Return an I/O error carrying this message, where the point can fail.
    Error(String),
}

static ANY_ARMED: AtomicBool = AtomicBool::new(false);
static POINTS: Mutex<Option<HashMap<String, Action>>> = Mutex::new(None);

/// Arms `name`.
pub fn set(name: &str, action: Action) {
    let mut p = POINTS.lock().unwrap_or_else(|e| e.into_inner());
    p.get_or_insert_with(HashMap::new)
        .insert(name.to_string(), action);
    ANY_ARMED.store(true, Ordering::Release);
}

/// Disarms `name`.
pub fn clear(name: &str) {
    let mut p = POINTS.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(map) = p.as_mut() {
        map.remove(name);
        if map.is_empty() {
            ANY_ARMED.store(false, Ordering::Release);
        }
    }
}

/// The action armed at `name`, if any.
pub fn get(name: &str) -> Option<Action> {
    if !ANY_ARMED.load(Ordering::Relaxed) {
        return None;
    }
    let p = POINTS.lock().unwrap_or_else(|e| e.into_inner());
    p.as_ref().and_then(|m| m.get(name).cloned())
}

/// Runs the point `name`: panics or sleeps when armed so; returns the error to fail with when
/// armed with [`Action::Error`].
pub fn hit(name: &str) -> Result<(), std::io::Error> {
    match get(name) {
        None => Ok(()),
        Some(Action::Panic) => panic!("failpoint {name}"),
        Some(Action::Delay(d)) => {
            std::thread::sleep(d);
            Ok(())
        }
        Some(Action::Error(message)) => Err(std::io::Error::other(message)),
    }
}
