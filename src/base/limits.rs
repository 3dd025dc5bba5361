//! The fixed limits of names, keys and stored documents: one place, read by the checks that
//! enforce them and by the error messages that quote them.

/// Longest name (namespace, queue, stream), in bytes.
pub const NAME_BYTES_MAX: usize = 64;
/// Longest key, in bytes.
pub const KEY_BYTES_MAX: usize = 1024;
/// Deepest nesting of a JSON document stored for a client (job and schedule payloads, event
/// data). Replies embed a stored document two or three levels deep, so 64 keeps every reply
/// within the 128 levels that serde_json and most client parsers accept by default.
pub const JSON_DEPTH_MAX: usize = 64;
/// Longest content type stored with a value.
pub const CONTENT_TYPE_BYTES_MAX: usize = 255;
