//! Text from elsewhere made fit to draw on the user's screen: the technician's name, the
//! session's name, the reason and the ticket all come from other people, so each is cleaned
//! (control characters become spaces, runs of white space one space, characters the core
//! font cannot draw `?`), capped in length and wrapped into a bounded number of lines. It is
//! drawn as it is: nothing in it is ever interpreted (no markup, no escapes, no format).

/// What marks text cut short.
const CUT: &str = "...";

/// `text` cleaned and cut to at most `max` characters, each of them Latin-1 and printable.
pub fn clean(text: &str, max: usize) -> String {
    let mut out = String::new();
    let mut count = 0;
    let mut cut = false;
    for c in text.chars() {
        let c = if c.is_control() || c.is_whitespace() {
            ' '
        } else if u32::from(c) > 0xff || c == '\u{ad}' {
            // The core font's encoding is Latin-1; a soft hyphen draws as nothing.
            '?'
        } else {
            c
        };
        if c == ' ' && (out.is_empty() || out.ends_with(' ')) {
            continue;
        }
        if count == max {
            cut = true;
            break;
        }
        out.push(c);
        count += 1;
    }
    let trimmed = out.trim_end().len();
    out.truncate(trimmed);
    if cut {
        let keep = max.saturating_sub(CUT.len());
        let end = out.char_indices().nth(keep).map_or(out.len(), |(i, _)| i);
        out.truncate(end);
        let trimmed = out.trim_end().len();
        out.truncate(trimmed);
        out.push_str(CUT);
    }
    out
}

/// The Latin-1 bytes of text [`clean`] made (anything else becomes `?`).
pub fn latin1(text: &str) -> Vec<u8> {
    text.chars()
        .map(|c| u8::try_from(u32::from(c)).unwrap_or(b'?'))
        .collect()
}

/// Clean `text` wrapped into lines of at most `cols` characters, at most `max_lines` of them
/// (the last one marked when text was left out). Words longer than a line are split.
pub fn wrap(text: &str, cols: usize, max_lines: usize) -> Vec<String> {
    let cols = cols.max(CUT.len() + 1);
    let text = clean(text, cols.saturating_mul(max_lines).saturating_add(1));
    let mut lines: Vec<String> = Vec::new();
    let mut line = String::new();
    for word in text.split(' ') {
        let mut word: Vec<char> = word.chars().collect();
        let fits = line.chars().count() + usize::from(!line.is_empty()) + word.len() <= cols;
        if !fits && !line.is_empty() {
            lines.push(std::mem::take(&mut line));
        }
        while word.len() > cols {
            let rest = word.split_off(cols);
            lines.push(word.into_iter().collect());
            word = rest;
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.extend(word);
    }
    if !line.is_empty() {
        lines.push(line);
    }
    if lines.len() > max_lines {
        lines.truncate(max_lines);
        if let Some(last) = lines.last_mut() {
            let keep: String = last.chars().take(cols - CUT.len()).collect();
            *last = format!("{}{CUT}", keep.trim_end());
        }
    }
    lines
}

/// "1:05", "0:09", "12:00".
pub fn mm_ss(seconds: u64) -> String {
    format!("{}:{:02}", seconds / 60, seconds % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_text_is_cleaned_and_capped() {
        let hostile = "mallory\n\r\u{1b}[2J\u{7}Allow\t\u{85}\u{202e}evil\u{200b}\u{ad}x";
        let shown = clean(hostile, 64);
        assert!(shown.chars().all(|c| !c.is_control()), "{shown:?}");
        assert!(shown.chars().all(|c| u32::from(c) <= 0xff), "{shown:?}");
        assert_eq!(shown, "mallory [2J Allow ?evil??x");
        let long = clean(&"a".repeat(10_000), 64);
        assert_eq!(long.chars().count(), 64);
        assert!(long.ends_with("..."));
        // Positive control: ordinary text is left as it is, accents included.
        assert_eq!(clean("Zoë  Müller", 64), "Zoë Müller");
        assert_eq!(latin1("Zoë"), b"Zo\xeb");
        assert_eq!(latin1("ĳ"), b"?");
        assert_eq!(clean("", 10), "");
        assert_eq!(clean("  \n ", 10), "");
    }

    #[test]
    fn wrapping_keeps_words_and_bounds_lines() {
        assert_eq!(
            wrap("the printer queue is stuck again", 12, 5),
            vec!["the printer", "queue is", "stuck again"]
        );
        // A word longer than a line is split, not overflowed.
        assert_eq!(wrap("abcdefghij", 4, 5), vec!["abcd", "efgh", "ij"]);
        // Too much text: the lines stop, and the last says so.
        let lines = wrap(&"word ".repeat(1000), 20, 3);
        assert_eq!(lines.len(), 3);
        assert!(lines.iter().all(|l| l.chars().count() <= 20), "{lines:?}");
        assert!(lines[2].ends_with("..."), "{lines:?}");
        // Hostile line breaks make no lines of their own.
        assert_eq!(wrap("a\n\n\nb", 20, 3), vec!["a b"]);
        assert!(wrap("", 20, 3).is_empty());
    }

    #[test]
    fn countdowns_read_as_minutes_and_seconds() {
        assert_eq!(mm_ss(0), "0:00");
        assert_eq!(mm_ss(9), "0:09");
        assert_eq!(mm_ss(119), "1:59");
        assert_eq!(mm_ss(720), "12:00");
    }
}
