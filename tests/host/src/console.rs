//! Reading results from the test host's serial console.
//!
//! The test host's init prints `@@KRUN_TESTHOST_BEGIN <nonce>@@` before the command and
//! `@@KRUN_TESTHOST_END <nonce> status=<N>@@` after it. The nonce is chosen per run, so
//! program output cannot fake a marker by accident.

/// What the console showed about the command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConsoleResult {
    /// The command ran to completion: its exit status and the output between the markers.
    Finished { status: i32, output: String },
    /// The init could not set up the test host (a module failed to load, ...).
    SetupFailed,
    /// No end marker: the test host hung or crashed.
    Incomplete,
}

pub fn begin_marker(nonce: &str) -> String {
    format!("@@KRUN_TESTHOST_BEGIN {nonce}@@")
}

pub fn end_marker_prefix(nonce: &str) -> String {
    format!("@@KRUN_TESTHOST_END {nonce} status=")
}

pub fn setup_failed_marker(nonce: &str) -> String {
    format!("@@KRUN_TESTHOST_SETUP_FAILED {nonce}@@")
}

/// The console text with serial line endings turned into `\n`.
pub fn normalize(raw: &[u8]) -> String {
    String::from_utf8_lossy(raw)
        .replace("\r\n", "\n")
        .replace('\r', "")
}

/// Finds the markers of `nonce` in normalized console text.
pub fn parse(console: &str, nonce: &str) -> ConsoleResult {
    if console.contains(&setup_failed_marker(nonce)) {
        return ConsoleResult::SetupFailed;
    }
    let begin = begin_marker(nonce);
    let Some(start) = console.find(&begin).map(|i| i + begin.len()) else {
        return ConsoleResult::Incomplete;
    };
    let after_begin = console[start..]
        .strip_prefix('\n')
        .unwrap_or(&console[start..]);
    let end = end_marker_prefix(nonce);
    let Some(end_at) = after_begin.find(&end) else {
        return ConsoleResult::Incomplete;
    };
    let tail = &after_begin[end_at + end.len()..];
    let Some(status) = tail.split_once("@@").and_then(|(n, _)| n.parse().ok()) else {
        return ConsoleResult::Incomplete;
    };
    ConsoleResult::Finished {
        status,
        output: after_begin[..end_at].to_owned(),
    }
}

/// The last `n` lines of `text`, for failure reports.
pub fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_output_and_status_between_markers() {
        let console = normalize(
            b"[ 1.0] boot noise\r\n@@KRUN_TESTHOST_BEGIN ab12@@\r\nhello\r\nworld\r\n@@KRUN_TESTHOST_END ab12 status=3@@\r\n[ 2.0] reboot\r\n",
        );
        assert_eq!(
            parse(&console, "ab12"),
            ConsoleResult::Finished {
                status: 3,
                output: "hello\nworld\n".into()
            }
        );
    }

    #[test]
    fn output_without_trailing_newline_is_kept() {
        let console = "@@KRUN_TESTHOST_BEGIN n@@\nno newline@@KRUN_TESTHOST_END n status=0@@\n";
        assert_eq!(
            parse(console, "n"),
            ConsoleResult::Finished {
                status: 0,
                output: "no newline".into()
            }
        );
    }

    #[test]
    fn markers_of_another_nonce_or_missing_end_are_incomplete() {
        let console = "@@KRUN_TESTHOST_BEGIN x@@\nout\n@@KRUN_TESTHOST_END x status=0@@\n";
        assert_eq!(parse(console, "y"), ConsoleResult::Incomplete);
        assert_eq!(
            parse("@@KRUN_TESTHOST_BEGIN y@@\nhung", "y"),
            ConsoleResult::Incomplete
        );
        assert_eq!(
            parse(
                "@@KRUN_TESTHOST_BEGIN y@@\n@@KRUN_TESTHOST_END y status=zz@@",
                "y"
            ),
            ConsoleResult::Incomplete
        );
    }

    #[test]
    fn setup_failure_is_reported() {
        assert_eq!(
            parse("insmod: x\n@@KRUN_TESTHOST_SETUP_FAILED q@@\n", "q"),
            ConsoleResult::SetupFailed
        );
    }

    #[test]
    fn last_lines_keeps_the_tail() {
        assert_eq!(last_lines("a\nb\nc\nd", 2), "c\nd");
        assert_eq!(last_lines("a", 5), "a");
    }
}
