//! Showing strings that users and devices supply: names, reasons, tickets, chat, file names.
//! Such text is hostile until escaped: a newline forges a log line or a prompt line, an escape
//! sequence rewrites a terminal, a bidirectional override hides what a name says. [`escape`]
//! makes any string safe to print on one line of a terminal, a log or a condition message.

use std::borrow::Cow;
use std::fmt::Write;

/// Whether `c` is printed as an escape rather than as itself: control characters (C0, DEL,
/// C1), bidirectional and other invisible formatting characters, and line or paragraph
/// separators.
fn needs_escape(c: char) -> bool {
    c.is_control()
        || matches!(c,
            '\u{00ad}'                      // soft hyphen
            | '\u{061c}'                    // Arabic letter mark
            | '\u{180e}'                    // Mongolian vowel separator
            | '\u{200b}'..='\u{200f}'       // zero-width characters, LRM/RLM
            | '\u{2028}'..='\u{202e}'       // line/paragraph separators, embeddings, overrides
            | '\u{2060}'..='\u{2064}'       // word joiner, invisible operators
            | '\u{2066}'..='\u{2069}'       // isolates
            | '\u{feff}'                    // byte order mark
            | '\u{fff9}'..='\u{fffb}'       // interlinear annotations
        )
        || c == '\\'
}

/// `s` as one printable line: control and invisible formatting characters become Rust-style
/// escapes (`\n`, `\t`, `\u{1b}`), a backslash becomes `\\`, everything else is kept.
/// Borrowed when nothing needed escaping.
pub fn escape(s: &str) -> Cow<'_, str> {
    if !s.chars().any(needs_escape) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if needs_escape(c) => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// [`escape`], cut to at most `max` characters of the original (an ellipsis marks the cut),
/// for names and reasons shown where space is short (a prompt, a condition message).
pub fn escape_short(s: &str, max: usize) -> String {
    let count = s.chars().count();
    if count <= max {
        return escape(s).into_owned();
    }
    let cut: String = s.chars().take(max).collect();
    format!("{}…", escape(&cut))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_text_is_borrowed_unchanged() {
        for s in ["carol", "Dana Müller", "été – 東京", "a/b c.txt", ""] {
            assert!(matches!(escape(s), Cow::Borrowed(x) if x == s));
        }
    }

    #[test]
    fn controls_and_invisible_formatting_are_escaped() {
        assert_eq!(escape("admin\nINFO forged"), "admin\\nINFO forged");
        assert_eq!(
            escape("\u{1b}[2J\u{1b}]0;x\u{7}"),
            "\\u{1b}[2J\\u{1b}]0;x\\u{7}"
        );
        assert_eq!(escape("a\tb\r"), "a\\tb\\r");
        assert_eq!(escape("evil\u{202e}txt.exe"), "evil\\u{202e}txt.exe");
        assert_eq!(escape("\u{85}\u{9b}"), "\\u{85}\\u{9b}");
        assert_eq!(escape("C:\\x"), "C:\\\\x");
        // Nothing printable that could move the cursor or break a line is left.
        let all: String = (0u32..0x3000).filter_map(char::from_u32).collect();
        let escaped = escape(&all);
        assert!(
            !escaped
                .chars()
                .any(|c| c.is_control() || needs_escape(c) && c != '\\')
        );
    }

    #[test]
    fn short_forms_are_cut_before_escaping() {
        let long = "x".repeat(200_000);
        let short = escape_short(&long, 64);
        assert_eq!(short.chars().count(), 65);
        assert!(short.ends_with('…'));
        assert_eq!(escape_short("a\nb", 64), "a\\nb");
    }
}
