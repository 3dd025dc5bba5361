//! Name rules and key building shared by every domain (core: no domain imports another).

/// Longest name (namespace, queue, stream), in bytes.
pub const NAME_BYTES_MAX: usize = 64;
/// Longest key, in bytes.
pub const KEY_BYTES_MAX: usize = 1024;

/// Checks a name (`what`: "namespace", "queue name", "stream name"): 1–64 bytes of
/// `[A-Za-z0-9_.-]`, so it never contains the 0x00 that separates it from a key.
pub fn validate_name(what: &str, name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > NAME_BYTES_MAX {
        return Err(format!(
            "{what} must be 1-{NAME_BYTES_MAX} characters, got {}",
            name.len()
        ));
    }
    if name == "." || name == ".." {
        return Err(format!(
            "{what} {name:?} is a path step: URL-normalising clients could never address it"
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')))
    {
        return Err(format!(
            "{what} {name:?} contains {c:?}; use only A-Z a-z 0-9 _ . -"
        ));
    }
    Ok(())
}

/// Checks a key: 1–1024 bytes of UTF-8 (UTF-8 is guaranteed by `&str`).
pub fn validate_key(key: &str) -> Result<(), String> {
    if key.is_empty() || key.len() > KEY_BYTES_MAX {
        return Err(format!(
            "key must be 1-{KEY_BYTES_MAX} bytes, got {}",
            key.len()
        ));
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
pub fn display_key(stored: &[u8]) -> String {
    String::from_utf8_lossy(stored).replace('\0', "/")
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
        let e = validate_name("queue name", "a:b").unwrap_err();
        assert!(e.contains("queue name") && e.contains("':'"), "{e}");
        assert!(validate_key("a/b").is_ok());
        assert!(validate_key("").is_err());
        assert_eq!(stored_key("ns", "k"), b"ns\0k");
        assert_eq!(display_key(b"ns\0k"), "ns/k");
    }
}
