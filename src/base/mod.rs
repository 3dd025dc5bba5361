//! Layer 0, the base: what every layer above may use and what uses nothing of shardbox's own.
//! The settings ([`config`]), the rules for names and keys, the errors of refused input, the
//! clock, tokens and scopes, the process-wide metric registry, progress bars, and the fault
//! points the tests arm. A file here imports only other files here.

pub mod clock;
pub mod config;
#[cfg(feature = "testing")]
pub mod failpoint;
/// Without the `testing` feature a fault point is nothing: the shipped binary carries none.
#[cfg(not(feature = "testing"))]
pub mod failpoint {
    #[inline(always)]
    pub fn hit(_name: &str) -> Result<(), std::io::Error> {
        Ok(())
    }
    #[inline(always)]
    pub fn hit_at(_name: &str, _index: usize) -> Result<(), std::io::Error> {
        Ok(())
    }
}
pub mod invalid;
pub mod json_object;
pub mod limits;
pub mod metrics;
pub mod names;
pub mod progress;
pub mod tokens;
pub mod util;
