//! Where things go in the agent's windows, in pixels, from the font's character cell: the
//! consent dialog (lines of text, a countdown line, Allow and Deny) and the viewing notice
//! (one line per session, each with its End session button). Pure, so it is tested without
//! an X server.

/// The core font's character cell.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cell {
    /// Advance of every character (the fonts used are fixed-width).
    pub width: u16,
    /// Ascent plus descent.
    pub height: u16,
    /// Baseline from the top of the cell.
    pub ascent: u16,
}

impl Cell {
    /// `fixed`'s cell.
    #[cfg(test)]
    pub const FIXED: Cell = Cell {
        width: 6,
        height: 13,
        ascent: 11,
    };

    fn cols(&self, cols: usize) -> u16 {
        u16::try_from(cols)
            .unwrap_or(u16::MAX)
            .saturating_mul(self.width)
    }
}

/// A rectangle in window coordinates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rect {
    /// Left.
    pub x: i16,
    /// Top.
    pub y: i16,
    /// Width.
    pub width: u16,
    /// Height.
    pub height: u16,
}

impl Rect {
    /// Whether the point is inside.
    pub fn contains(&self, x: i16, y: i16) -> bool {
        let (x, y) = (i32::from(x), i32::from(y));
        let (left, top) = (i32::from(self.x), i32::from(self.y));
        x >= left
            && y >= top
            && x < left + i32::from(self.width)
            && y < top + i32::from(self.height)
    }
}

/// A line of text: where its baseline starts and what it says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Line {
    /// Left of the first character.
    pub x: i16,
    /// Baseline.
    pub baseline: i16,
    /// The text (already clean).
    pub text: String,
}

/// A button: its frame and its label.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Button {
    /// The frame, which takes the clicks.
    pub rect: Rect,
    /// The label.
    pub label: Line,
}

/// Space around text, in pixels.
const PAD: u16 = 12;

/// Inside a button, left and right of its label, in pixels.
const BUTTON_PAD: u16 = 10;

fn px(v: u16) -> i16 {
    i16::try_from(v).unwrap_or(i16::MAX)
}

fn button(label: &str, x: u16, y: u16, cell: Cell) -> Button {
    let width = cell.cols(label.chars().count()) + 2 * BUTTON_PAD;
    let height = cell.height + 8;
    Button {
        rect: Rect {
            x: px(x),
            y: px(y),
            width,
            height,
        },
        label: Line {
            x: px(x + BUTTON_PAD),
            baseline: px(y + 4 + cell.ascent),
            text: label.to_owned(),
        },
    }
}

/// The consent dialog's parts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dialog {
    /// Window width.
    pub width: u16,
    /// Window height.
    pub height: u16,
    /// The question's lines.
    pub lines: Vec<Line>,
    /// Where the countdown line goes (its text is redrawn every second, padded to
    /// `countdown_cols`).
    pub countdown: Line,
    /// The countdown line's width in characters.
    pub countdown_cols: usize,
    /// Allow.
    pub allow: Button,
    /// Deny.
    pub deny: Button,
}

/// Lays the dialog out: `lines` (each at most `cols` characters), then the countdown line of
/// `countdown_cols` characters, then Allow and Deny side by side at the right.
pub fn dialog(lines: &[String], countdown_cols: usize, cell: Cell) -> Dialog {
    let cols = lines
        .iter()
        .map(|l| l.chars().count())
        .chain([countdown_cols])
        .max()
        .unwrap_or(0);
    let mut y = PAD;
    let mut out = Vec::new();
    for text in lines {
        out.push(Line {
            x: px(PAD),
            baseline: px(y + cell.ascent),
            text: text.clone(),
        });
        y += cell.height + 2;
    }
    y += cell.height / 2;
    let countdown = Line {
        x: px(PAD),
        baseline: px(y + cell.ascent),
        text: String::new(),
    };
    y += cell.height + PAD;
    let allow_w = cell.cols(5) + 2 * BUTTON_PAD;
    let deny_w = cell.cols(4) + 2 * BUTTON_PAD;
    let text_w = cell.cols(cols);
    let width = text_w.max(allow_w + deny_w + PAD) + 2 * PAD;
    let deny = button("Deny", width - PAD - deny_w, y, cell);
    let allow = button("Allow", width - 2 * PAD - deny_w - allow_w, y, cell);
    let height = y + deny.rect.height + PAD;
    Dialog {
        width,
        height,
        lines: out,
        countdown,
        countdown_cols,
        allow,
        deny,
    }
}

/// The viewing notice's parts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bar {
    /// Window width.
    pub width: u16,
    /// Window height.
    pub height: u16,
    /// One line per session.
    pub lines: Vec<Line>,
    /// Each line's End session button, in the same order.
    pub buttons: Vec<Button>,
}

/// The label of the notice's buttons.
pub const END_SESSION: &str = "End session";

/// Lays the notice out: one row per line, its End session button at the right; every row
/// as wide as the widest.
pub fn bar(lines: &[String], cell: Cell) -> Bar {
    let cols = lines.iter().map(|l| l.chars().count()).max().unwrap_or(0);
    let button_w = cell.cols(END_SESSION.len()) + 2 * BUTTON_PAD;
    let row_h = cell.height + 12;
    let text_w = cell.cols(cols);
    let width = text_w + button_w + 3 * (PAD / 2) + PAD / 2;
    let mut out = Vec::new();
    let mut buttons = Vec::new();
    for (i, text) in lines.iter().enumerate() {
        let top = u16::try_from(i)
            .unwrap_or(u16::MAX)
            .saturating_mul(row_h)
            .saturating_add(2);
        out.push(Line {
            x: px(PAD / 2),
            baseline: px(top + 6 + cell.ascent - 2),
            text: text.clone(),
        });
        let mut b = button(END_SESSION, width - PAD / 2 - button_w, top, cell);
        b.rect.height = row_h - 4;
        buttons.push(b);
    }
    let rows = u16::try_from(lines.len()).unwrap_or(u16::MAX).max(1);
    Bar {
        width,
        height: rows.saturating_mul(row_h) + 2,
        lines: out,
        buttons,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn overlaps(a: &Rect, b: &Rect) -> bool {
        let (ax, ay, bx, by) = (
            i32::from(a.x),
            i32::from(a.y),
            i32::from(b.x),
            i32::from(b.y),
        );
        ax < bx + i32::from(b.width)
            && bx < ax + i32::from(a.width)
            && ay < by + i32::from(b.height)
            && by < ay + i32::from(a.height)
    }

    fn inside(outer: (u16, u16), r: &Rect) -> bool {
        r.x >= 0
            && r.y >= 0
            && i32::from(r.x) + i32::from(r.width) <= i32::from(outer.0)
            && i32::from(r.y) + i32::from(r.height) <= i32::from(outer.1)
    }

    #[test]
    fn the_dialogs_text_and_buttons_fit_and_do_not_overlap() {
        let cell = Cell::FIXED;
        let lines: Vec<String> = vec!["x".repeat(56), "short".into(), "".into()];
        let d = dialog(&lines, 40, cell);
        assert!(d.width >= 56 * cell.width, "{d:?}");
        assert!(inside((d.width, d.height), &d.allow.rect), "{d:?}");
        assert!(inside((d.width, d.height), &d.deny.rect), "{d:?}");
        assert!(!overlaps(&d.allow.rect, &d.deny.rect));
        // Lines come one under the other, above the countdown, above the buttons.
        let baselines: Vec<i16> = d.lines.iter().map(|l| l.baseline).collect();
        assert!(
            baselines
                .windows(2)
                .all(|w| w[1] - w[0] >= cell.height as i16)
        );
        assert!(d.countdown.baseline > *baselines.last().unwrap());
        assert!(d.allow.rect.y > d.countdown.baseline);
        // Clicks land on the button under them, and nowhere else.
        let a = d.allow.rect;
        assert!(a.contains(a.x + 1, a.y + 1));
        assert!(!a.contains(a.x + a.width as i16, a.y));
        assert!(!d.deny.rect.contains(a.x + 1, a.y + 1));
        // A dialog with little to say still has room for both buttons.
        let small = dialog(&["hi".into()], 2, cell);
        assert!(small.allow.rect.x >= 0);
        assert!(inside((small.width, small.height), &small.deny.rect));
    }

    #[test]
    fn each_notice_row_has_its_own_button() {
        let cell = Cell::FIXED;
        let rows = vec!["a".repeat(70), "b".into()];
        let b = bar(&rows, cell);
        assert_eq!(b.buttons.len(), 2);
        assert!(!overlaps(&b.buttons[0].rect, &b.buttons[1].rect));
        for button in &b.buttons {
            assert!(inside((b.width, b.height), &button.rect), "{b:?}");
        }
        // The text ends before the button starts.
        let text_end = b.lines[0].x as i32 + 70 * i32::from(cell.width);
        assert!(text_end <= i32::from(b.buttons[0].rect.x), "{b:?}");
        assert!(b.lines[1].baseline > b.lines[0].baseline);
        assert!(
            b.buttons[1]
                .rect
                .contains(b.buttons[1].rect.x + 2, b.buttons[1].rect.y + 2)
        );
    }
}
