//! Fault injection for tests: named points in the code that a test can arm to panic, fail or
//! stall, so failure paths are exercised for real instead of being mocked.
//!
//! Points are process-wide. Unarmed, a point costs one relaxed atomic load. A test that arms a
//! point runs alone in a process of its own (`common::alone()` in `tests/it/`), because the
//! other tests of the binary share the process. Only a build with the `testing` feature has
//! fault points at all.

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
    /// Block for as long as the point stays armed with `Pause` (a test holds a thread at a
    /// precise place, checks what others see, then clears the point).
    Pause,
    /// Return an I/O error carrying this message, where the point can fail.
    Error(String),
    /// Pass this many more hits, then return errors like [`Action::Error`] (an I/O fault that
    /// strikes the Nth write or sync).
    ErrorAfter(u64, String),
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

/// Runs the point `name` for one instance (a shard): `name@index` when armed, else `name`.
pub fn hit_at(name: &str, index: usize) -> Result<(), std::io::Error> {
    if !ANY_ARMED.load(Ordering::Relaxed) {
        return Ok(());
    }
    let own = format!("{name}@{index}");
    if get(&own).is_some() {
        hit(&own)
    } else {
        hit(name)
    }
}

/// Runs the point `name`: panics or sleeps when armed so; returns the error to fail with when
/// armed with [`Action::Error`] (or [`Action::ErrorAfter`], once its passes are used up).
pub fn hit(name: &str) -> Result<(), std::io::Error> {
    if let Some(Action::ErrorAfter(..)) = get(name) {
        let mut p = POINTS.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(Action::ErrorAfter(left, message)) = p.as_mut().and_then(|m| m.get_mut(name)) {
            if *left > 0 {
                *left -= 1;
                return Ok(());
            }
            return Err(std::io::Error::other(message.clone()));
        }
        return Ok(());
    }
    match get(name) {
        None => Ok(()),
        Some(Action::Panic) => panic!("failpoint {name}"),
        Some(Action::Delay(d)) => {
            std::thread::sleep(d);
            Ok(())
        }
        Some(Action::Pause) => {
            while get(name) == Some(Action::Pause) {
                std::thread::sleep(Duration::from_millis(1));
            }
            Ok(())
        }
        Some(Action::Error(message)) | Some(Action::ErrorAfter(_, message)) => {
            Err(std::io::Error::other(message))
        }
    }
}

/// Arms points from text like `wal.sync=delay(200);checkpoint.commit=pause`: actions are
/// `panic`, `pause`, `delay(<ms>)` and `error(<message>)`. The binary reads it from
/// `SHARDBOX_FAILPOINTS` so crash tests can hold the real server at a chosen place.
pub fn arm_from_spec(spec: &str) -> Result<(), String> {
    for item in spec.split(';').map(str::trim).filter(|s| !s.is_empty()) {
        let (name, action) = item
            .split_once('=')
            .ok_or_else(|| format!("failpoint `{item}`: expected name=action"))?;
        let action = action.trim();
        let parsed = if action == "panic" {
            Action::Panic
        } else if action == "pause" {
            Action::Pause
        } else if let Some(ms) = action
            .strip_prefix("delay(")
            .and_then(|a| a.strip_suffix(')'))
        {
            Action::Delay(Duration::from_millis(ms.parse().map_err(|_| {
                format!("failpoint `{item}`: delay needs milliseconds")
            })?))
        } else if let Some(m) = action
            .strip_prefix("error(")
            .and_then(|a| a.strip_suffix(')'))
        {
            Action::Error(m.to_string())
        } else if let Some(args) = action
            .strip_prefix("error_after(")
            .and_then(|a| a.strip_suffix(')'))
        {
            let (n, m) = args.split_once(',').unwrap_or((args, "injected I/O error"));
            let n = n.trim().parse().map_err(|_| {
                format!("failpoint `{item}`: error_after needs a count: error_after(N,message)")
            })?;
            Action::ErrorAfter(n, m.trim().to_string())
        } else {
            return Err(format!(
                "failpoint `{item}`: action must be panic, pause, delay(ms), error(message) or error_after(N,message)"
            ));
        };
        set(name.trim(), parsed);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_and_bad_ones_are_errors() {
        arm_from_spec("t.a=delay(5); t.b=error(disk gone)").unwrap();
        assert_eq!(get("t.a"), Some(Action::Delay(Duration::from_millis(5))));
        assert!(hit("t.b").is_err());
        clear("t.a");
        clear("t.b");
        assert_eq!(get("t.a"), None);
        arm_from_spec("t.c@2=error_after(2,boom)").unwrap();
        assert!(hit_at("t.c", 1).is_ok(), "another instance is not armed");
        assert!(hit_at("t.c", 2).is_ok() && hit_at("t.c", 2).is_ok());
        assert!(hit_at("t.c", 2).is_err() && hit_at("t.c", 2).is_err());
        clear("t.c@2");
        for bad in ["x", "x=sleep", "x=delay(z)"] {
            assert!(arm_from_spec(bad).is_err(), "{bad}");
        }
    }
}
