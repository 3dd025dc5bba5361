//! The results table: rows, ratios against the peer measured in the same run, rendering.

use crate::loadgen::Outcome;
use crate::support::{Opts, VALUE_BYTES};
use std::fmt::Write as _;

/// One line of the results table.
pub struct Row {
    pub workload: String,
    pub system: String,
    pub outcome: Option<Outcome>,
    /// Throughput ratio shardbox / peer, on the shardbox row.
    pub ratio: Option<(f64, String)>,
    pub note: String,
}

pub fn row(workload: &str, system: &str, outcome: Outcome, note: &str) -> Row {
    Row {
        workload: workload.into(),
        system: system.into(),
        outcome: Some(outcome),
        ratio: None,
        note: note.into(),
    }
}

pub fn unavailable(workload: &str, system: &str, why: &str) -> Row {
    Row {
        workload: workload.into(),
        system: system.into(),
        outcome: None,
        ratio: None,
        note: format!("peer not available: {why}"),
    }
}

pub fn set_ratio(rows: &mut [Row], ours: usize, theirs: usize, label: &str) {
    let (Some(a), Some(b)) = (&rows[ours].outcome, &rows[theirs].outcome) else {
        return;
    };
    if b.throughput() > 0.0 {
        let r = a.throughput() / b.throughput();
        rows[ours].ratio = Some((r, label.to_string()));
    }
}

/// Adds to `ours`'s note its throughput and server CPU per operation against `theirs` (the
/// HTTP ceiling, or a second peer): `0.59× ÷ ceiling, CPU 1.75×`.
pub fn note_ratio(rows: &mut [Row], ours: usize, theirs: usize, label: &str) {
    let (Some(a), Some(b)) = (&rows[ours].outcome, &rows[theirs].outcome) else {
        return;
    };
    if b.throughput() <= 0.0 {
        return;
    }
    let mut text = format!("**{:.2}×** {label}", a.throughput() / b.throughput());
    if let (Some(ca), Some(cb)) = (a.cpu_us_per_op, b.cpu_us_per_op) {
        if cb > 0.0 {
            text.push_str(&format!(", CPU/op {:.2}×", ca / cb));
        }
    }
    let note = &mut rows[ours].note;
    if !note.is_empty() {
        note.push_str("; ");
    }
    note.push_str(&text);
}

pub fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    format!("{cores} cores, {cpu}")
}

pub fn render(o: &Opts, rows: &[Row]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "machine: {} | {} connections, {} s per run, {}-byte values, {} keys\n",
        machine(),
        o.connections,
        o.duration.as_secs_f64(),
        VALUE_BYTES,
        o.keys
    );
    let _ = writeln!(
        s,
        "| workload | system | ops/s | p50 ms | p99 ms | p99.9 ms | errors | server CPU µs/op | ratio | notes |"
    );
    let _ = writeln!(s, "|---|---|---:|---:|---:|---:|---:|---:|---|---|");
    for r in rows {
        match &r.outcome {
            Some(out) => {
                let ratio = r
                    .ratio
                    .as_ref()
                    .map(|(x, l)| format!("**{x:.2}×** {l}"))
                    .unwrap_or_default();
                let cpu = out
                    .cpu_us_per_op
                    .map(|c| format!("{c:.1}"))
                    .unwrap_or_else(|| "–".into());
                let _ = writeln!(
                    s,
                    "| {} | {} | {:.0} | {:.2} | {:.2} | {:.2} | {} | {} | {} | {} |",
                    r.workload,
                    r.system,
                    out.throughput(),
                    out.p(0.5),
                    out.p(0.99),
                    out.p(0.999),
                    out.errors,
                    cpu,
                    ratio,
                    r.note
                );
            }
            None => {
                let _ = writeln!(
                    s,
                    "| {} | {} | – | – | – | – | – | – | – | {} |",
                    r.workload, r.system, r.note
                );
            }
        }
    }
    s
}

/// One line of a chart.
pub struct Series {
    pub name: String,
    pub color: &'static str,
    pub values: Vec<f64>,
}

impl Series {
    pub fn new(name: &str, color: &'static str) -> Series {
        Series {
            name: name.into(),
            color,
            values: Vec::new(),
        }
    }
    pub fn push(&mut self, v: f64) {
        self.values.push(v);
    }
}

/// A line chart (SVG, 640×320) of `series` over the categories `labels` (evenly spaced).
pub fn svg_lines(
    title: &str,
    xlabel: &str,
    ylabel: &str,
    labels: &[String],
    series: &[Series],
    ymin: f64,
) -> String {
    let (w, h, pad) = (640.0, 320.0, 64.0);
    let ymax = series
        .iter()
        .flat_map(|s| s.values.iter().copied())
        .fold(ymin + 1e-9, f64::max)
        * 1.15;
    let n = labels.len().max(2) as f64;
    let x = |i: usize| pad + i as f64 * (w - 2.0 * pad) / (n - 1.0);
    let y = |v: f64| h - pad - (v - ymin) / (ymax - ymin) * (h - 2.0 * pad);
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{}\" y=\"20\" text-anchor=\"middle\" font-size=\"14\">{title}</text>\n\
         <line x1=\"{pad}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"black\"/>\n\
         <line x1=\"{pad}\" y1=\"{pad}\" x2=\"{pad}\" y2=\"{}\" stroke=\"black\"/>\n\
         <text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{xlabel}</text>\n\
         <text x=\"14\" y=\"{}\" transform=\"rotate(-90 14 {})\" text-anchor=\"middle\">{ylabel}</text>\n",
        w / 2.0,
        h - pad,
        w - pad,
        h - pad,
        h - pad,
        w / 2.0,
        h - 18.0,
        h / 2.0,
        h / 2.0
    );
    for i in 0..=4 {
        let v = ymin + (ymax - ymin) * i as f64 / 4.0;
        let text = if v >= 1000.0 {
            format!("{:.0}k", v / 1000.0)
        } else {
            format!("{v:.2}")
        };
        s.push_str(&format!(
            "<text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{text}</text>\n",
            pad - 5.0,
            y(v) + 4.0
        ));
    }
    for (i, l) in labels.iter().enumerate() {
        s.push_str(&format!(
            "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{l}</text>\n",
            x(i),
            h - pad + 16.0
        ));
    }
    for (k, ser) in series.iter().enumerate() {
        let pts: Vec<String> = ser
            .values
            .iter()
            .enumerate()
            .map(|(i, v)| format!("{:.1},{:.1}", x(i), y(*v)))
            .collect();
        s.push_str(&format!(
            "<polyline fill=\"none\" stroke=\"{}\" stroke-width=\"2\" points=\"{}\"/>\n",
            ser.color,
            pts.join(" ")
        ));
        for p in &pts {
            let (px, py) = p.split_once(',').unwrap_or(("0", "0"));
            s.push_str(&format!(
                "<circle cx=\"{px}\" cy=\"{py}\" r=\"3\" fill=\"{}\"/>\n",
                ser.color
            ));
        }
        s.push_str(&format!(
            "<text x=\"{}\" y=\"{}\" fill=\"{}\">— {}</text>\n",
            pad + 10.0,
            44.0 + 15.0 * k as f64,
            ser.color,
            ser.name
        ));
    }
    s.push_str("</svg>\n");
    s
}

/// Stacks SVG documents vertically into one.
pub fn stack_svgs(parts: &[String]) -> String {
    let mut out = String::new();
    let mut y = 0.0;
    let mut inner = String::new();
    for p in parts {
        let h: f64 = p
            .split("height=\"")
            .nth(1)
            .and_then(|r| r.split('"').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(320.0);
        inner.push_str(&format!(
            "<g transform=\"translate(0,{y})\">{}</g>\n",
            p.replacen("<svg ", "<svg x=\"0\" ", 1)
        ));
        y += h;
    }
    out.push_str(&format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"640\" height=\"{y}\">\n{inner}</svg>\n"
    ));
    out
}

/// Writes one of the suite's outputs beside the build (`CARGO_TARGET_DIR` when set, else the
/// project's `target/`) and says where, or why it could not.
pub fn write_output(name: &str, text: &str, what: &str) {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
    let out = target.join(name);
    match std::fs::write(&out, text) {
        Ok(()) => eprintln!("{what} written to {}", out.display()),
        Err(e) => eprintln!("{what}: cannot write {}: {e}", out.display()),
    }
}
