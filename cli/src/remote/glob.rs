//! The globs `files find` accepts: what to ask the device for and how to match its answers
//! (the device itself matches a part of the name).

/// Whether a find pattern is a glob.
pub(super) fn is_glob(pattern: &str) -> bool {
    pattern.contains(['*', '?', '['])
}

/// What to ask the device for: the pattern itself, or a glob's longest literal part (every
/// name the glob matches contains it), lower-cased as the device compares.
pub(super) fn glob_hint(pattern: &str) -> String {
    if !is_glob(pattern) {
        return pattern.to_owned();
    }
    let mut best = String::new();
    let mut current = String::new();
    let mut in_class = false;
    for c in pattern.chars() {
        match c {
            '[' if !in_class => in_class = true,
            ']' if in_class => in_class = false,
            '*' | '?' if !in_class => {}
            c if !in_class => {
                current.push(c);
                continue;
            }
            _ => continue,
        }
        if current.chars().count() > best.chars().count() {
            best = std::mem::take(&mut current);
        }
        current.clear();
    }
    if current.chars().count() > best.chars().count() {
        best = current;
    }
    best.to_lowercase()
}

/// Matches `name` against a glob (`*`, `?`, `[abc]`, `[a-z]`, `[!a]`), case-insensitively.
pub(super) fn glob_match(pattern: &str, name: &str) -> bool {
    let p: Vec<char> = pattern.to_lowercase().chars().collect();
    let n: Vec<char> = name.to_lowercase().chars().collect();
    // Iterative matching with one backtrack point for the last `*`.
    let (mut pi, mut ni) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        let step = match p.get(pi) {
            Some('*') => {
                star = Some((pi, ni));
                pi += 1;
                continue;
            }
            Some('?') => Some(pi + 1),
            Some('[') => class(&p, pi, n[ni]),
            Some(c) if *c == n[ni] => Some(pi + 1),
            _ => None,
        };
        match (step, star) {
            (Some(next), _) => {
                pi = next;
                ni += 1;
            }
            (None, Some((sp, sn))) => {
                pi = sp + 1;
                ni = sn + 1;
                star = Some((sp, sn + 1));
            }
            (None, None) => return false,
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

/// Matches `c` against the class starting at `p[start]` (`[`); the index after it, if it
/// matches. An unclosed `[` is a literal.
fn class(p: &[char], start: usize, c: char) -> Option<usize> {
    let mut i = start + 1;
    let negated = matches!(p.get(i), Some('!' | '^'));
    if negated {
        i += 1;
    }
    let mut matched = false;
    let mut first = true;
    while let Some(&ch) = p.get(i) {
        if ch == ']' && !first {
            return (matched != negated).then_some(i + 1);
        }
        first = false;
        if p.get(i + 1) == Some(&'-') && p.get(i + 2).is_some_and(|e| *e != ']') {
            if (ch..=p[i + 2]).contains(&c) {
                matched = true;
            }
            i += 3;
        } else {
            if ch == c {
                matched = true;
            }
            i += 1;
        }
    }
    (c == '[').then_some(start + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn find_patterns_are_globs() {
        assert!(glob_match("*.txt", "notes.TXT"));
        assert!(!glob_match("*.txt", "notes.txt.bak"));
        assert!(!glob_match("*.txt", "txt"));
        assert!(glob_match("report-?.pdf", "report-3.pdf"));
        assert!(!glob_match("report-?.pdf", "report-10.pdf"));
        assert!(glob_match("[ab]*", "beta"));
        assert!(!glob_match("[ab]*", "gamma"));
        assert!(glob_match("[!ab]*", "gamma"));
        assert!(glob_match("file[0-9]", "file7"));
        assert!(!glob_match("file[0-9]", "filex"));
        assert!(glob_match("*a*b*c", "xxaxxbxxc"));
        assert!(!glob_match("*a*b*c", "xxaxxcxxb"));
        assert!(glob_match("[unclosed", "[unclosed"));
        assert!(glob_match("*", ""));
        // What the device is asked for: something every match contains.
        assert_eq!(glob_hint("*.txt"), ".txt");
        assert_eq!(glob_hint("Report-?.pdf"), "report-");
        assert_eq!(glob_hint("[ab]*"), "");
        assert_eq!(glob_hint("report"), "report");
        assert!(!is_glob("report") && is_glob("*.txt"));
    }
}
