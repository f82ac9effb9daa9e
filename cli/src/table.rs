//! Plain tables like kubectl's: upper-case headers, columns padded by three spaces.

/// Renders rows under `headers`, each column as wide as its widest cell.
pub fn render(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let line = |cells: Vec<&str>| {
        let mut out = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                out.push_str(cell);
            } else {
                let pad = widths[i] - cell.chars().count() + 3;
                out.push_str(cell);
                out.push_str(&" ".repeat(pad));
            }
        }
        out.trim_end().to_owned() + "\n"
    };
    let mut out = line(headers.to_vec());
    for row in rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

/// A kubectl-style age: `45s`, `12m`, `3h`, `2d`.
pub fn age(since: jiff::Timestamp, now: jiff::Timestamp) -> String {
    let secs = now.duration_since(since).as_secs().max(0);
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

/// A span of time for people, in its two largest units: `42s`, `4m05s`, `3h05m`, `2d3h`.
pub fn span(secs: i64) -> String {
    let secs = secs.max(0);
    let (d, h, m, s) = (
        secs / 86_400,
        secs % 86_400 / 3600,
        secs % 3600 / 60,
        secs % 60,
    );
    match () {
        () if d > 0 => format!("{d}d{h}h"),
        () if h > 0 => format!("{h}h{m:02}m"),
        () if m > 0 => format!("{m}m{s:02}s"),
        () => format!("{s}s"),
    }
}

/// A point in time in one fixed width (UTC, whole seconds), so columns of times line up.
pub fn time(t: jiff::Timestamp) -> String {
    t.strftime("%Y-%m-%d %H:%M:%SZ").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligns_columns() {
        let out = render(
            &["NAME", "PHASE"],
            &[
                vec!["a".into(), "Pending".into()],
                vec!["longer-name".into(), "".into()],
            ],
        );
        assert_eq!(
            out,
            "NAME          PHASE\na             Pending\nlonger-name\n"
        );
    }

    #[test]
    fn ages() {
        let t0: jiff::Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let at = |s: i64| t0 + jiff::SignedDuration::from_secs(s);
        assert_eq!(age(t0, at(45)), "45s");
        assert_eq!(age(t0, at(600)), "10m");
        assert_eq!(age(t0, at(3 * 3600)), "3h");
        assert_eq!(age(t0, at(3 * 86_400)), "3d");
        assert_eq!(age(at(10), t0), "0s");
    }

    #[test]
    fn spans_and_times_for_people() {
        assert_eq!(span(42), "42s");
        assert_eq!(span(245), "4m05s");
        assert_eq!(span(45 * 60), "45m00s");
        assert_eq!(span(3 * 3600 + 5 * 60 + 9), "3h05m");
        assert_eq!(span(2 * 86_400 + 3 * 3600 + 59), "2d3h");
        // A session years away is not shown as a million minutes.
        assert_eq!(span(1_710_879 * 60 + 55), "1188d2h");
        assert_eq!(span(-5), "0s");
        let a: jiff::Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let b: jiff::Timestamp = "2026-01-01T00:00:01.123456Z".parse().unwrap();
        assert_eq!(time(a), "2026-01-01 00:00:00Z");
        assert_eq!(time(b).len(), time(a).len());
    }
}
