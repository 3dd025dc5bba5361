//! Users' configuration keeps working across the typed sections: every setting keeps its flat
//! name in the TOML file, the environment and `--set`, the config files in the docs resolve as
//! written, and the docs' table of settings names exactly the settings there are.

use shardbox::Config;

fn root() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The text of every ```toml block of a Markdown file.
fn toml_blocks(md: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur: Option<String> = None;
    for line in md.lines() {
        match (&mut cur, line.trim_start()) {
            (None, l) if l.starts_with("```toml") => cur = Some(String::new()),
            (Some(_), l) if l.starts_with("```") => out.extend(cur.take()),
            (Some(b), _) => {
                b.push_str(line);
                b.push('\n');
            }
            _ => {}
        }
    }
    out
}

/// Whether `got` holds what `want` says: equal, or for a table (`[sink.nats]`) every key of
/// `want` with what it says (the rest are that table's defaults).
fn holds(got: &toml::Value, want: &toml::Value) -> bool {
    match (got, want) {
        (toml::Value::Table(g), toml::Value::Table(w)) => w
            .iter()
            .all(|(k, v)| g.get(k).is_some_and(|gv| holds(gv, v))),
        _ => got == want,
    }
}

#[test]
fn the_config_files_in_the_docs_resolve() {
    let mut seen = 0;
    for doc in [
        "README.md",
        "docs/operations.md",
        "docs/design.md",
        "docs/api.md",
    ] {
        let text = std::fs::read_to_string(root().join(doc)).expect("read doc");
        for block in toml_blocks(&text) {
            let c = Config::resolve(Some(&block), std::iter::empty(), &[])
                .unwrap_or_else(|e| panic!("{doc}: {e}\n{block}"));
            seen += 1;
            // What the file says is what the sections hold.
            let table: toml::Table = toml::from_str(&block).expect("toml");
            let back = toml::Table::try_from(&c).expect("serialise");
            for (k, v) in table {
                let got = back
                    .get(&k)
                    .unwrap_or_else(|| panic!("{doc}: `{k}` missing"));
                assert!(
                    holds(got, &v),
                    "{doc}: `{k}` did not come through: {got} against {v}"
                );
            }
        }
    }
    assert!(seen >= 1, "no ```toml block found in the docs");
}

#[test]
fn every_setting_keeps_its_flat_name_in_each_source() {
    let file = "value_bytes_max = 1000\njob_bytes_max = 2000\nevent_bytes_max = 3000\n\
                cache_tags_max = 4\nshards = 3\nconnections_max = 64\nidempotency_ttl_ms = 5000\n";
    let env = vec![
        ("SHARDBOX_CLAIM_MAX".to_string(), "7".to_string()),
        ("SHARDBOX_KV_CACHE_BYTES".to_string(), "0".to_string()),
    ];
    let set = vec![("trim_buckets_max".to_string(), "9".to_string())];
    let c = Config::resolve(Some(file), env, &set).expect("resolve");
    assert_eq!(c.kv.value_bytes_max, 1000);
    assert_eq!(c.queue.job_bytes_max, 2000);
    assert_eq!(c.events.event_bytes_max, 3000);
    assert_eq!(c.cache.cache_tags_max, 4);
    assert_eq!(c.engine.shards, 3);
    assert_eq!(c.http.connections_max, 64);
    assert_eq!(c.idempotency.idempotency_ttl_ms, 5000);
    assert_eq!(c.queue.claim_max, 7);
    assert_eq!(c.kv.kv_cache_bytes, 0);
    assert_eq!(c.events.trim_buckets_max, 9);

    // Serialised, the sections are flat again: no setting is named after its section.
    let t = toml::Table::try_from(Config::default()).expect("serialise");
    for section in [
        "engine",
        "kv",
        "queue",
        "events",
        "cache",
        "http",
        "idempotency",
    ] {
        assert!(
            !t.contains_key(section),
            "`{section}` leaked into the flat names"
        );
    }
    assert!(t.contains_key("value_bytes_max") && t.contains_key("tls_cert"));

    // A section name is not a setting, and a wrong type names the setting.
    let e =
        Config::resolve(Some("[kv]\nvalue_bytes_max = 1\n"), std::iter::empty(), &[]).unwrap_err();
    assert!(e.contains("unknown setting `kv`"), "{e}");
    let e = Config::resolve(Some("shards = \"x\"\n"), std::iter::empty(), &[]).unwrap_err();
    assert!(e.contains("shards"), "{e}");
}

#[test]
fn the_docs_table_names_every_setting() {
    let ops = std::fs::read_to_string(root().join("docs/operations.md")).expect("read");
    let documented: std::collections::BTreeSet<String> = ops
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split_once(" |").map(|(cell, _)| cell.to_string()))
        .flat_map(|cell| {
            cell.split('`')
                .map(str::to_string)
                .filter(|n| {
                    !n.is_empty()
                        && n.chars()
                            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
                })
                .collect::<Vec<_>>()
        })
        .collect();
    let t = toml::Table::try_from(Config::default()).expect("serialise");
    let missing: Vec<&String> = t.keys().filter(|k| !documented.contains(*k)).collect();
    assert!(
        missing.is_empty(),
        "settings missing from operations.md's table: {missing:?}"
    );
}

/// `dist/shardbox.toml`, the file a package ships: it parses, it is the defaults exactly (so
/// shipping it changes nothing), it names every setting with a comment above each, and every
/// setting `serve --help` offers as a flag is in it.
#[test]
fn the_shipped_config_file_is_every_setting_at_its_default() {
    let text = std::fs::read_to_string(root().join("dist/shardbox.toml")).expect("read");
    let c = Config::resolve(Some(&text), std::iter::empty(), &[]).expect("resolve");
    let got = toml::Table::try_from(&c).expect("serialise");
    let defaults = toml::Table::try_from(Config::default()).expect("serialise");
    assert_eq!(got, defaults, "dist/shardbox.toml is not the defaults");
    let file: toml::Table = toml::from_str(&text).expect("toml");
    let missing: Vec<&String> = defaults.keys().filter(|k| !file.contains_key(*k)).collect();
    assert!(missing.is_empty(), "dist/shardbox.toml lacks {missing:?}");
    let lines: Vec<&str> = text.lines().collect();
    for (i, l) in lines.iter().enumerate() {
        if let Some((name, _)) = l.split_once(" = ").filter(|_| !l.starts_with('#')) {
            assert!(
                i > 0 && lines[i - 1].starts_with("# ") && lines[i - 1].len() > 4,
                "`{name}` has no comment line above it"
            );
        }
    }
    let help = std::process::Command::new(env!("CARGO_BIN_EXE_shardbox"))
        .args(["serve", "--help"])
        .output()
        .expect("serve --help");
    let help = String::from_utf8_lossy(&help.stdout);
    let flags: Vec<String> = help
        .split_whitespace()
        .filter_map(|w| w.strip_prefix("--"))
        .map(|f| f.trim_end_matches(|c: char| !c.is_ascii_alphanumeric()))
        .filter(|f| !["help", "config", "set"].contains(f))
        .map(|f| {
            if f == "data" {
                "data_dir".into()
            } else {
                f.replace('-', "_")
            }
        })
        .collect();
    assert!(flags.len() >= 8, "read {flags:?} from serve --help");
    for f in flags {
        assert!(
            file.contains_key(&f),
            "serve --help offers --{f}, dist/shardbox.toml lacks it"
        );
    }
}

/// A mistyped flag near a setting's name says how to set that setting (`--set`), besides
/// clap's own tip (which points at the nearest flag, not the nearest setting).
#[test]
fn a_mistyped_setting_flag_points_at_set() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_shardbox"))
        .args(["serve", "--shard-cach-bytes", "1"])
        .output()
        .expect("run shardbox");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--set shard_cache_bytes=<value>"), "{err}");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_shardbox"))
        .args(["serve", "--frobnicate-everything"])
        .output()
        .expect("run shardbox");
    assert_eq!(out.status.code(), Some(2));
    assert!(!String::from_utf8_lossy(&out.stderr).contains("--set"));
}
