//! The layer rule, kept by the build: every `crate::` path in `src/` points down the layers
//! (base → engine → domains → store → http → the crate root and the binary), no domain names
//! another, and no two files import each other, directly or round a circle.
//!
//! A file's layer is its folder (docs/design.md, "Layers"):
//!
//! | folder | layer | may use |
//! |---|---|---|
//! | `src/base/` | 0 | base |
//! | `src/engine/` | 1 | base, engine |
//! | `src/{kv,queue,events,cache,idempotency}/` | 2 | base, engine, its own domain |
//! | `src/store/` | 3 | all of the above |
//! | `src/http/` | 4 | all of the above |
//! | `src/lib.rs`, `src/main.rs`, `src/fuzzing.rs` | 5 | everything |
//!
//! Paths are read from the code as text (comments left out), resolved to the file that
//! defines the module they name. A module index (`mod.rs`) naming its own submodules is not
//! an import: it declares them.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const DOMAINS: &[&str] = &["kv", "queue", "events", "cache", "idempotency"];

/// The layer of a file (by its path under `src/`) and, for a domain, which one.
fn layer_of(rel: &str) -> (u8, Option<&str>) {
    let top = rel.split('/').next().unwrap_or(rel);
    match top {
        "base" => (0, None),
        "engine" => (1, None),
        "store" => (3, None),
        "http" => (4, None),
        d if DOMAINS.contains(&d) => (2, DOMAINS.iter().copied().find(|x| *x == d)),
        _ => (5, None),
    }
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .expect("read src")
        .map(|e| e.expect("dir entry").path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

/// The module path of a file: `src/engine/wal/mod.rs` → `["engine", "wal"]`.
fn module_of(rel: &str) -> Vec<String> {
    let mut parts: Vec<String> = rel
        .trim_end_matches(".rs")
        .split('/')
        .map(String::from)
        .collect();
    if parts
        .last()
        .is_some_and(|p| p == "mod" || p == "lib" || p == "main")
    {
        parts.pop();
    }
    parts
}

/// The code of a file without its comments and unit tests (string contents stay, which is
/// harmless: no string in `src/` spells a `crate::` path).
fn code_of(text: &str) -> String {
    // A file's unit tests sit at its end, in `mod tests` whose `super::` is the file itself:
    // they are left out (they may use whatever the file can).
    let text = text.split("#[cfg(test)]\nmod tests").next().unwrap_or(text);
    text.lines()
        .map(|l| match l.find("//") {
            Some(i) if !l[..i].contains('"') => &l[..i],
            _ => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every path that starts at `crate::`, `super::` or `self::`, with `use` groups
/// (`crate::{a, b::{c, d}}`) expanded, as absolute module paths (leading segments only:
/// type and function names are cut off where no module of that name exists).
fn paths_in(code: &str, module: &[String]) -> Vec<Vec<String>> {
    let bytes = code.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if !code.is_char_boundary(i) {
            i += 1;
            continue;
        }
        let rest = &code[i..];
        let start = ["crate::", "super::", "self::"]
            .iter()
            .find(|p| rest.starts_with(**p))
            .filter(|_| {
                i == 0
                    || !(bytes[i - 1].is_ascii_alphanumeric()
                        || bytes[i - 1] == b'_'
                        || bytes[i - 1] == b':')
            });
        let Some(_) = start else {
            i += 1;
            continue;
        };
        // The whole path expression, braces included.
        let mut depth = 0i32;
        let mut j = i;
        while j < bytes.len() {
            let c = bytes[j];
            if c == b'{' {
                depth += 1;
            } else if c == b'}' {
                if depth == 0 {
                    break;
                }
                depth -= 1;
            } else if depth == 0 && !(c.is_ascii_alphanumeric() || c == b'_' || c == b':') {
                break;
            }
            j += 1;
        }
        for p in expand(&code[i..j]) {
            out.push(absolute(&p, module));
        }
        i = j.max(i + 1);
    }
    out
}

/// `a::{b, c::{d}}` → `a::b`, `a::c::d`.
fn expand(path: &str) -> Vec<String> {
    let path: String = path.chars().filter(|c| !c.is_whitespace()).collect();
    let Some(open) = path.find('{') else {
        return vec![path];
    };
    let prefix = &path[..open];
    let inner = &path[open + 1..path.rfind('}').unwrap_or(path.len())];
    let mut parts = Vec::new();
    let (mut depth, mut last) = (0, 0);
    for (k, c) in inner.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&inner[last..k]);
                last = k + 1;
            }
            _ => {}
        }
    }
    parts.push(&inner[last..]);
    parts
        .into_iter()
        .filter(|p| !p.is_empty())
        .flat_map(|p| {
            let p = if p == "self" {
                String::new()
            } else {
                p.to_string()
            };
            expand(&p).into_iter().map(|q| format!("{prefix}{q}"))
        })
        .collect()
}

fn absolute(path: &str, module: &[String]) -> Vec<String> {
    let mut segs: Vec<&str> = path.split("::").filter(|s| !s.is_empty()).collect();
    let mut base: Vec<String> = Vec::new();
    match segs.first().copied() {
        Some("crate") => {
            segs.remove(0);
        }
        Some("self") | Some("super") => {
            base = module.to_vec();
            while let Some(s) = segs.first().copied() {
                match s {
                    "self" => {}
                    "super" => {
                        base.pop();
                    }
                    _ => break,
                }
                segs.remove(0);
            }
        }
        _ => {}
    }
    base.extend(
        segs.iter()
            .map(|s| s.split(" as ").next().unwrap_or(s).to_string()),
    );
    base
}

/// The file that defines the longest module prefix of `path`.
fn file_for(path: &[String], files: &BTreeMap<Vec<String>, String>) -> Option<String> {
    (0..=path.len())
        .rev()
        .find_map(|n| files.get(&path[..n]).cloned())
}

fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut paths = Vec::new();
    rust_files(&src, &mut paths);
    let rel: Vec<String> = paths
        .iter()
        .map(|p| {
            p.strip_prefix(&src)
                .expect("under src")
                .to_string_lossy()
                .replace('\\', "/")
        })
        .collect();
    let mut files = BTreeMap::new();
    for r in &rel {
        if r != "main.rs" {
            files.insert(module_of(r), r.clone());
        }
    }
    let mut g = BTreeMap::new();
    for (p, r) in paths.iter().zip(&rel) {
        let text = std::fs::read_to_string(p).expect("read source");
        let module = module_of(r);
        let mut to = BTreeSet::new();
        for path in paths_in(&code_of(&text), &module) {
            let Some(target) = file_for(&path, &files) else {
                continue;
            };
            let target_module = module_of(&target);
            // An index declaring (and re-exporting) its own submodules is no import.
            let own_sub = r.ends_with("mod.rs") && target_module.starts_with(&module);
            if &target != r && !own_sub {
                to.insert(target);
            }
        }
        g.insert(r.clone(), to);
    }
    g
}

#[test]
fn every_import_points_down_the_layers() {
    let g = graph();
    assert!(g.len() > 50, "read {} files from src/", g.len());
    let mut wrong = Vec::new();
    for (from, tos) in &g {
        let (lf, df) = layer_of(from);
        for to in tos {
            let (lt, dt) = layer_of(to);
            let up = lt > lf;
            let across = lf == 2 && lt == 2 && df != dt;
            if up || across {
                wrong.push(format!("{from} (layer {lf}) -> {to} (layer {lt})"));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "imports against the layers:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn no_file_imports_round_a_circle() {
    let g = graph();
    // Tarjan's strongly connected components: any component of more than one file is a circle.
    struct T<'a> {
        g: &'a BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on: BTreeSet<&'a str>,
        next: usize,
        circles: Vec<Vec<&'a str>>,
    }
    fn visit<'a>(t: &mut T<'a>, v: &'a str) {
        t.index.insert(v, t.next);
        t.low.insert(v, t.next);
        t.next += 1;
        t.stack.push(v);
        t.on.insert(v);
        let g = t.g;
        for w in g.get(v).into_iter().flatten() {
            let w = w.as_str();
            if !t.index.contains_key(w) {
                visit(t, w);
                let lw = t.low[w];
                let lv = t.low.get_mut(v).expect("visited");
                *lv = (*lv).min(lw);
            } else if t.on.contains(w) {
                let iw = t.index[w];
                let lv = t.low.get_mut(v).expect("visited");
                *lv = (*lv).min(iw);
            }
        }
        if t.low[v] == t.index[v] {
            let mut c = Vec::new();
            while let Some(w) = t.stack.pop() {
                t.on.remove(w);
                c.push(w);
                if w == v {
                    break;
                }
            }
            if c.len() > 1 {
                c.sort();
                t.circles.push(c);
            }
        }
    }
    let mut t = T {
        g: &g,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on: BTreeSet::new(),
        next: 0,
        circles: Vec::new(),
    };
    for v in g.keys() {
        if !t.index.contains_key(v.as_str()) {
            visit(&mut t, v);
        }
    }
    let circles: Vec<String> = t.circles.iter().map(|c| c.join(" <-> ")).collect();
    assert!(
        circles.is_empty(),
        "import circles:\n{}",
        circles.join("\n")
    );
}

/// The reader itself: a path written every way the code writes one lands on its file, so a
/// clean result above means the imports were seen.
#[test]
fn the_reader_sees_each_form_of_path() {
    let module = vec!["kv".to_string(), "apply".to_string()];
    let code = "use crate::engine::{codec::Envelope, Engine};\nuse super::KV;\nlet x = crate::base::names::validate(k);\nuse crate::{base::util, cache};";
    let got: Vec<String> = paths_in(code, &module)
        .iter()
        .map(|p| p.join("::"))
        .collect();
    assert_eq!(
        got,
        [
            "engine::codec::Envelope",
            "engine::Engine",
            "kv::KV",
            "base::names::validate",
            "base::util",
            "cache"
        ]
    );
    let g = graph();
    assert!(
        g["store/backup.rs"].contains("engine/mod.rs"),
        "{:?}",
        g["store/backup.rs"]
    );
    assert!(g["kv/apply.rs"].contains("kv/mod.rs"));
    assert!(
        !g["kv/mod.rs"].contains("kv/apply.rs"),
        "an index declares its submodules"
    );
}
