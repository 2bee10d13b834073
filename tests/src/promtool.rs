//! Prometheus' own linter for the text the agent and the host stub serve on
//! `/metrics` (Debian's `prometheus` package; `scripts/setup.sh` installs it).

use std::io::Write as _;
use std::process::{Command, Stdio};

/// Runs `promtool check metrics` on `text`; a failure fails the test with
/// promtool's output and `text`. Returns what promtool printed (stdout then
/// stderr): its lints, empty when it had none.
pub fn check_metrics(text: &str) -> String {
    let child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = child.unwrap_or_else(|e| {
        panic!("promtool cannot run ({e}): run scripts/setup.sh (Debian's prometheus package)")
    });
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{said}\n/metrics:\n{text}"
    );
    said
}
