//! Who may do what: bearer tokens with scopes, optionally limited by name prefix.
//!
//! A token is 32 random bytes shown once as `sbx_<base64url>`; the config keeps only its
//! SHA-256 (a hash of 256 random bits needs no slow KDF: there is nothing to guess). A presented
//! token is hashed and compared with every configured hash in constant time
//! ([`subtle::ConstantTimeEq`]), so neither a near-miss nor which token matched shows in the
//! timing.
//!
//! Scopes: `read` (GET/HEAD and `:batchGet`), `write` (everything else that changes data),
//! `feed` (the change feed and its cursors), and `admin` (backups and mass deletes; implies the
//! others). `namespaces`, `streams` and
//! `queues` limit a token to names with one of the listed prefixes; absent means any name. A
//! route over every name of a kind (a list, cache-wide stats, schedules — a schedule's body
//! names the queue it feeds) needs a token without a limit of that kind; server-wide routes
//! (metrics, status, admin) need a token without any limit.

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// A permission a route needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    Read,
    Write,
    Admin,
    /// The change feed (`/v1/changes`): every change of every name, so only a token without
    /// name limits may have it.
    Feed,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Write => "write",
            Scope::Admin => "admin",
            Scope::Feed => "feed",
        }
    }
}

/// What a name limit applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// KV and cache namespaces.
    Namespace,
    Stream,
    /// Queues (and the schedules that feed them).
    Queue,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Namespace => "namespace",
            Kind::Stream => "stream",
            Kind::Queue => "queue",
        }
    }
}

/// One `[[tokens]]` entry of the config file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// Shown in logs and used as the rate-limit key; never secret.
    pub name: String,
    /// Hex SHA-256 of the token (`shardbox token new` prints it).
    pub sha256: String,
    pub scopes: Vec<Scope>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespaces: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub streams: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queues: Option<Vec<String>>,
}

/// Token names: what a log line and a metric label can carry.
const NAME_MAX: usize = 64;

impl TokenConfig {
    /// Checks one entry; `Err` says what to fix.
    pub fn validate(&self) -> Result<(), String> {
        if self.name.is_empty()
            || self.name.len() > NAME_MAX
            || !self
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            return Err(format!(
                "token name `{}`: 1-{NAME_MAX} characters of A-Z a-z 0-9 - _ .",
                self.name
            ));
        }
        if decode_hash(&self.sha256).is_none() {
            return Err(format!(
                "token `{}`: sha256 must be 64 hex digits (the line `shardbox token new` prints)",
                self.name
            ));
        }
        if self.scopes.is_empty() {
            return Err(format!(
                "token `{}`: scopes is empty; give one or more of read, write, admin",
                self.name
            ));
        }
        Ok(())
    }
}

fn decode_hash(hex: &str) -> Option<[u8; 32]> {
    let hex = hex.trim().as_bytes();
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in hex.chunks(2).enumerate() {
        let s = std::str::from_utf8(pair).ok()?;
        out[i] = u8::from_str_radix(s, 16).ok()?;
    }
    Some(out)
}

/// The hex SHA-256 of a token, as the config stores it.
pub fn hash_token(token: &str) -> String {
    crate::base::util::hex(&Sha256::digest(token.as_bytes()))
}

/// A fresh random token (`sbx_` + 43 base64url characters).
pub fn new_token() -> String {
    let bytes: [u8; 32] = rand::random();
    format!(
        "sbx_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    )
}

/// A token as the server holds it.
#[derive(Debug)]
pub struct Principal {
    /// Shared, so a request's caller and rate-limit key are a reference count, not a copy.
    pub name: std::sync::Arc<str>,
    hash: [u8; 32],
    scopes: Vec<Scope>,
    namespaces: Option<Vec<String>>,
    streams: Option<Vec<String>>,
    queues: Option<Vec<String>>,
}

/// Why a request is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denied {
    /// No token, or not a bearer token (401).
    Missing,
    /// A token that matches none configured (401).
    Unknown,
    /// The token lacks the scope (403).
    Scope(Scope),
    /// The token's prefixes do not cover the name (403).
    Name(Kind, String),
    /// The route serves more than one name and the token is limited (403).
    Limited,
}

impl Principal {
    fn limits(&self, kind: Kind) -> Option<&[String]> {
        match kind {
            Kind::Namespace => self.namespaces.as_deref(),
            Kind::Stream => self.streams.as_deref(),
            Kind::Queue => self.queues.as_deref(),
        }
    }

    /// True when the token has no prefix limit on names of `kind`.
    pub fn unlimited_in(&self, kind: Kind) -> bool {
        self.limits(kind).is_none()
    }

    fn is_limited(&self) -> bool {
        self.namespaces.is_some() || self.streams.is_some() || self.queues.is_some()
    }

    /// May this token do `need` on `target` (`None`: a route that names no one thing)?
    pub fn allows(&self, need: Scope, target: Option<(Kind, &str)>) -> Result<(), Denied> {
        if !self.scopes.iter().any(|&s| s == need || s == Scope::Admin) {
            return Err(Denied::Scope(need));
        }
        match target {
            None if self.is_limited() => Err(Denied::Limited),
            None => Ok(()),
            Some((kind, name)) => match self.limits(kind) {
                Some(prefixes) if !prefixes.iter().any(|p| name.starts_with(p.as_str())) => {
                    Err(Denied::Name(kind, name.to_string()))
                }
                _ => Ok(()),
            },
        }
    }
}

/// The configured tokens.
#[derive(Debug, Default)]
pub struct Tokens(Vec<Principal>);

impl Tokens {
    /// Built from validated config entries (an entry whose hash does not decode is skipped;
    /// `Config::validate` has refused it already).
    pub fn new(configs: &[TokenConfig]) -> Self {
        Self(
            configs
                .iter()
                .filter_map(|c| {
                    Some(Principal {
                        name: c.name.as_str().into(),
                        hash: decode_hash(&c.sha256)?,
                        scopes: c.scopes.clone(),
                        namespaces: c.namespaces.clone(),
                        streams: c.streams.clone(),
                        queues: c.queues.clone(),
                    })
                })
                .collect(),
        )
    }

    /// True when no token is configured: every request is let through.
    pub fn is_open(&self) -> bool {
        self.0.is_empty()
    }

    /// The principal an `Authorization` header value names.
    pub fn authenticate(&self, header: Option<&[u8]>) -> Result<&Principal, Denied> {
        let header = header.ok_or(Denied::Missing)?;
        // The scheme is case-insensitive (RFC 9110 §11.1).
        let token = match header.split_at_checked(7) {
            Some((scheme, token)) if scheme.eq_ignore_ascii_case(b"bearer ") => token,
            _ => return Err(Denied::Missing),
        };
        let presented: [u8; 32] = Sha256::digest(token.trim_ascii()).into();
        // Every hash is compared, found or not.
        let mut found = None;
        for p in &self.0 {
            if bool::from(p.hash.ct_eq(&presented)) {
                found = Some(p);
            }
        }
        found.ok_or(Denied::Unknown)
    }
}

/// The config lines for a new token (printed by `shardbox token new`).
pub fn config_snippet(token: &str, name: &str, scopes: &[Scope]) -> String {
    let scopes: Vec<String> = scopes
        .iter()
        .map(|s| format!("\"{}\"", s.as_str()))
        .collect();
    format!(
        "[[tokens]]\nname = \"{name}\"\nsha256 = \"{}\"\nscopes = [{}]\n# namespaces = [\"app-\"]   # optional: limit to names with these prefixes\n# streams = [\"app-\"]\n# queues = [\"app-\"]\n",
        hash_token(token),
        scopes.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens(extra: &str) -> (String, Tokens) {
        let token = new_token();
        let text = format!(
            "{}{extra}",
            config_snippet(&token, "t", &[Scope::Read, Scope::Write])
        );
        #[derive(Deserialize)]
        struct File {
            tokens: Vec<TokenConfig>,
        }
        let f: File = toml::from_str(&text).unwrap();
        f.tokens[0].validate().unwrap();
        (token, Tokens::new(&f.tokens))
    }

    #[test]
    fn a_new_token_authenticates_and_others_do_not() {
        let (token, t) = tokens("");
        let header = format!("Bearer {token}");
        assert_eq!(&*t.authenticate(Some(header.as_bytes())).unwrap().name, "t");
        let wrong = format!("Bearer {}", new_token());
        assert_eq!(
            t.authenticate(Some(wrong.as_bytes())).unwrap_err(),
            Denied::Unknown
        );
        assert_eq!(
            t.authenticate(Some(token.as_bytes())).unwrap_err(),
            Denied::Missing
        );
        assert_eq!(t.authenticate(None).unwrap_err(), Denied::Missing);
    }

    #[test]
    fn scopes_and_prefixes_limit() {
        let (token, t) = tokens("namespaces = [\"app-\"]\n");
        let header = format!("Bearer {token}");
        let p = t.authenticate(Some(header.as_bytes())).unwrap();
        assert_eq!(
            p.allows(Scope::Write, Some((Kind::Namespace, "app-1"))),
            Ok(())
        );
        assert_eq!(
            p.allows(Scope::Write, Some((Kind::Namespace, "other"))),
            Err(Denied::Name(Kind::Namespace, "other".into()))
        );
        assert_eq!(p.allows(Scope::Read, Some((Kind::Queue, "any"))), Ok(()));
        assert_eq!(p.allows(Scope::Read, None), Err(Denied::Limited));
        assert_eq!(
            p.allows(Scope::Admin, Some((Kind::Namespace, "app-1"))),
            Err(Denied::Scope(Scope::Admin))
        );
    }

    #[test]
    fn bad_entries_say_what_to_fix() {
        let mut c = TokenConfig {
            name: "a b".into(),
            sha256: hash_token("x"),
            scopes: vec![Scope::Read],
            namespaces: None,
            streams: None,
            queues: None,
        };
        assert!(c.validate().unwrap_err().contains("token name"));
        c.name = "ok".into();
        c.sha256 = "abc".into();
        assert!(c.validate().unwrap_err().contains("64 hex digits"));
        c.sha256 = hash_token("x");
        c.scopes.clear();
        assert!(c.validate().unwrap_err().contains("scopes is empty"));
    }
}
