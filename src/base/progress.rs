//! Progress of long operations (backup, restore, compact, export, import, check): a bar on a
//! terminal, plain lines (at most one every 2 s, and the last) otherwise, so a log or a
//! pipe gets readable progress instead of control codes. Hidden when quiet.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub struct Progress {
    what: String,
    mode: Mode,
    done: AtomicU64,
    total: AtomicU64,
    last_line: Mutex<Instant>,
}

enum Mode {
    Bar(indicatif::ProgressBar),
    Lines,
    Quiet,
}

const LINE_EVERY: Duration = Duration::from_secs(2);

impl Progress {
    /// A bar when stderr is a terminal, else lines on stderr.
    pub fn for_stderr(what: &str) -> Self {
        if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
            let bar = indicatif::ProgressBar::new(0);
            bar.set_message(what.to_string());
            Self::with(what, Mode::Bar(bar))
        } else {
            Self::with(what, Mode::Lines)
        }
    }

    /// No output (the server's own backups, tests).
    pub fn quiet() -> Self {
        Self::with("", Mode::Quiet)
    }

    fn with(what: &str, mode: Mode) -> Self {
        Progress {
            what: what.to_string(),
            mode,
            done: AtomicU64::new(0),
            total: AtomicU64::new(0),
            last_line: Mutex::new(Instant::now()),
        }
    }

    pub fn set_total(&self, total: u64) {
        self.total.store(total, Ordering::Relaxed);
        if let Mode::Bar(b) = &self.mode {
            b.set_length(total);
        }
    }

    pub fn inc(&self, n: u64) {
        let done = self.done.fetch_add(n, Ordering::Relaxed) + n;
        match &self.mode {
            Mode::Bar(b) => b.inc(n),
            Mode::Lines => {
                let mut last = self.last_line.lock().unwrap_or_else(|p| p.into_inner());
                if last.elapsed() >= LINE_EVERY {
                    *last = Instant::now();
                    self.line(done);
                }
            }
            Mode::Quiet => {}
        }
    }

    fn line(&self, done: u64) {
        match self.total.load(Ordering::Relaxed) {
            // Unknown total (an export streamed from the server): the count alone.
            0 => eprintln!("{}: {done}", self.what),
            total => {
                let pct = done * 100 / total;
                eprintln!("{}: {done}/{total} ({pct}%)", self.what);
            }
        }
    }

    pub fn finish(&self) {
        match &self.mode {
            Mode::Bar(b) => b.finish_and_clear(),
            Mode::Lines => self.line(self.done.load(Ordering::Relaxed)),
            Mode::Quiet => {}
        }
    }
}
