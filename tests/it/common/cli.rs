//! Running the `shardbox` binary's commands (backup, restore, export, import, check) as a user
//! would.

use std::path::Path;
use std::process::{Command, Output};

/// Runs `shardbox <args>` to completion.
pub fn shardbox(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_shardbox"))
        .args(args)
        .output()
        .expect("run shardbox")
}

/// Asserts the command succeeded (showing its output if not) and returns its stdout.
pub fn ok(out: &Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A path as a command-line argument.
pub fn p(path: &Path) -> &str {
    path.to_str().expect("a UTF-8 path")
}
