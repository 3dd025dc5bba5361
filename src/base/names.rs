//! Name rules and key building shared by every domain (core: no domain imports another).

use crate::base::invalid::Invalid;

pub use super::limits::{KEY_BYTES_MAX, NAME_BYTES_MAX};

/// Checks a name (`what`: "namespace", "queue name", "stream name"): 1–64 bytes of
/// `[A-Za-z0-9_.-]`, so it never contains the 0x00 that separates it from a key.
pub fn validate_name(what: &'static str, name: &str) -> Result<(), Invalid> {
    if name.is_empty() || name.len() > NAME_BYTES_MAX {
        return Err(Invalid::NameLength {
            what,
            len: name.len(),
        });
    }
    if name == "." || name == ".." {
        return Err(Invalid::NamePathStep {
            what,
            name: name.to_string(),
        });
    }
    if let Some(ch) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')))
    {
        return Err(Invalid::NameChar {
            what,
            name: name.to_string(),
            ch,
        });
    }
    Ok(())
}

/// Checks a key: 1–1024 bytes of UTF-8 (UTF-8 is guaranteed by `&str`).
pub fn validate_key(key: &str) -> Result<(), Invalid> {
    if key.is_empty() || key.len() > KEY_BYTES_MAX {
        return Err(Invalid::KeyLength { len: key.len() });
    }
    Ok(())
}

/// The stored (and routing) key of `ns`/`key`: `ns ‖ 0x00 ‖ key`.
pub fn stored_key(ns: &str, key: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(ns.len() + 1 + key.len());
    k.extend_from_slice(ns.as_bytes());
    k.push(0);
    k.extend_from_slice(key.as_bytes());
    k
}

/// The user-facing form of a stored key, for messages.
/// `ns/key`, with control characters of the key escaped (a key may hold any UTF-8, NUL
/// included, and a message must neither hide nor fake them).
pub fn display_key(stored: &[u8]) -> String {
    let text = String::from_utf8_lossy(stored);
    let (ns, key) = text.split_once('\0').unwrap_or(("", &text));
    let mut out = String::with_capacity(stored.len() + 1);
    out.push_str(ns);
    out.push('/');
    for c in key.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// A stored value's content type: at most `CONTENT_TYPE_BYTES_MAX` bytes of what an HTTP header
/// value may hold (visible ASCII, space, tab), so it can always be served back.
pub fn validate_content_type(ct: &str) -> Result<(), Invalid> {
    let max = super::limits::CONTENT_TYPE_BYTES_MAX;
    if ct.len() > max {
        return Err(Invalid::ContentTypeLength { len: ct.len(), max });
    }
    if !ct.bytes().all(|b| b == b'\t' || (0x20..0x7f).contains(&b)) {
        return Err(Invalid::ContentTypeChars);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_keys() {
        assert!(validate_name("namespace", "app-1.x_y").is_ok());
        assert!(validate_name("namespace", "").is_err());
        assert!(validate_name("queue name", "..").is_err());
        assert!(validate_name("queue name", ".").is_err());
        assert!(validate_name("queue name", "...").is_ok());
        assert!(validate_name("namespace", &"a".repeat(65)).is_err());
        let e = validate_name("queue name", "a:b").unwrap_err().to_string();
        assert!(e.contains("queue name") && e.contains("':'"), "{e}");
        assert_eq!(
            validate_name("namespace", "").unwrap_err().to_string(),
            "namespace must be 1-64 characters, got 0"
        );
        assert_eq!(
            validate_key("").unwrap_err().to_string(),
            "key must be 1-1024 bytes, got 0"
        );
        assert!(validate_key("a/b").is_ok());
        assert!(validate_key("").is_err());
        assert_eq!(stored_key("ns", "k"), b"ns\0k");
        assert_eq!(display_key(b"ns\0k"), "ns/k");
    }
}
