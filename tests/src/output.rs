//! What the tests read from a finished command (`kubectl tether`, `kubectl`): its output as
//! text, and the checks that it succeeded or failed, printing everything it said when not.

use std::process::Output;

/// The command's standard output, as text.
pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The command's standard error, as text.
pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Asserts the command succeeded; its standard output.
pub fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "kubectl tether failed ({}): {}{}",
        out.status,
        stdout(&out),
        stderr(&out)
    );
    stdout(&out)
}

/// Asserts the command failed; its standard error (where the reason is).
pub fn fails(out: Output) -> String {
    assert!(
        !out.status.success(),
        "kubectl tether unexpectedly succeeded: {}{}",
        stdout(&out),
        stderr(&out)
    );
    stderr(&out)
}
