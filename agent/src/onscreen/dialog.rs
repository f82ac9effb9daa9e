//! The consent dialog on the user's X display: who asks (the name the cluster verified),
//! for which session, why, what they could do, and how long is left to answer, with Allow
//! and Deny. No answer by the deadline is a refusal.
//!
//! Focus is taken so Enter and Escape work without a window manager; that also means keys
//! typed elsewhere can land in the dialog the moment it appears. So Escape and Deny work at
//! once, but Enter and Allow only count [`ARMED_AFTER`] after the dialog was drawn: a user
//! typing Enter in another window, or clicking where the dialog pops up, allows nothing.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tether_proto::token::{DesktopPermission, Permissions};

use super::layout::{self, Dialog};
use super::text::{clean, mm_ss, wrap};
use super::window::{Colours, Happened, Window, WindowError};
use crate::desktop::x11::X11Settings;

/// Consent dialogs on the screen now, per display.
static OPEN: Mutex<BTreeMap<String, usize>> = Mutex::new(BTreeMap::new());

fn open_dialogs() -> std::sync::MutexGuard<'static, BTreeMap<String, usize>> {
    OPEN.lock().unwrap_or_else(|e| e.into_inner())
}

/// Whether a consent dialog is on `display`. Technicians' keyboard and pointer input to it
/// is held back meanwhile, so one already in control of the screen cannot answer for the
/// user (the dialog is in their view).
pub fn is_open(display: &str) -> bool {
    open_dialogs().get(display).is_some_and(|n| *n > 0)
}

/// Counts a dialog as open on its display while it lives.
struct Open(String);

impl Open {
    fn new(display: &str) -> Self {
        *open_dialogs().entry(display.to_owned()).or_default() += 1;
        Self(display.to_owned())
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        let mut open = open_dialogs();
        if let Some(n) = open.get_mut(&self.0) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&self.0);
            }
        }
    }
}

/// The start of the dialog's window name (what `xdotool search --name` finds); the
/// technician's name follows it.
pub const TITLE: &str = "Tether: remote assistance request";

/// How long after the dialog is drawn Allow and Enter start to count.
pub const ARMED_AFTER: Duration = Duration::from_millis(700);

/// Text columns of the dialog.
const COLS: usize = 60;

/// Where values start after their label.
const LABEL: usize = 12;

/// The longest a name is shown.
const NAME: usize = 64;

/// The countdown line's width.
const COUNTDOWN_COLS: usize = 50;

/// How often the countdown is redrawn and a cancelled question noticed.
const TICK: Duration = Duration::from_millis(200);

/// What the dialog asks about; every string in it comes from elsewhere.
#[derive(Clone, Debug, Default)]
pub struct Question {
    /// The technician's verified name.
    pub technician: String,
    /// The session's name.
    pub session: String,
    /// The device's name.
    pub device: String,
    /// Why the session exists.
    pub reason: Option<String>,
    /// The ticket it is for.
    pub ticket: Option<String>,
    /// What the session allows.
    pub permissions: Option<Permissions>,
}

/// How the dialog ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Choice {
    /// Allow (a click, or Enter).
    Allow,
    /// Deny (a click, or Escape).
    Deny,
    /// Nothing by the deadline.
    TimedOut,
    /// The question was withdrawn (the session ended, the agent is stopping).
    Withdrawn,
}

fn field(label: &str, value: &str, max_lines: usize) -> Vec<String> {
    let width = COLS - LABEL;
    wrap(value, width, max_lines)
        .into_iter()
        .enumerate()
        .map(|(i, l)| {
            let head = if i == 0 { label } else { "" };
            format!("{head:<LABEL$}{l}")
        })
        .collect()
}

/// What a session's permissions let the technician do, in the user's words.
pub fn access(permissions: &Permissions) -> String {
    let mut can = Vec::new();
    match permissions.desktop {
        DesktopPermission::Control => can.push("see and control your screen"),
        DesktopPermission::ViewOnly => can.push("see your screen"),
        DesktopPermission::None => {}
    }
    if permissions.shell {
        can.push("run commands");
    }
    if permissions.files {
        can.push("read and write your files");
    }
    if permissions.processes {
        can.push("list and stop programs");
    }
    if permissions.chat {
        can.push("chat");
    }
    if can.is_empty() {
        "nothing".into()
    } else {
        can.join(", ")
    }
}

/// The dialog's lines, each at most [`COLS`] characters, every string cleaned and capped.
pub fn lines(q: &Question) -> Vec<String> {
    let mut out = vec![
        "Someone asks to connect to this computer.".to_owned(),
        String::new(),
    ];
    out.extend(field("Technician:", &clean(&q.technician, NAME), 2));
    let session = format!("{} on {}", clean(&q.session, NAME), clean(&q.device, NAME));
    out.extend(field("Session:", &session, 3));
    if let Some(reason) = q.reason.as_deref().filter(|r| !r.trim().is_empty()) {
        out.extend(field("Reason:", reason, 3));
    }
    if let Some(ticket) = q.ticket.as_deref().filter(|t| !t.trim().is_empty()) {
        out.extend(field("Ticket:", &clean(ticket, NAME), 1));
    }
    if let Some(p) = &q.permissions {
        out.extend(field("They could:", &access(p), 3));
    }
    out
}

/// The countdown line for `left`.
pub fn countdown(left: Duration) -> String {
    let seconds = left.as_secs() + u64::from(left.subsec_nanos() > 0);
    format!("Answer within {}; no answer refuses.", mm_ss(seconds))
}

/// The dialog's decisions, in explicit time.
#[derive(Clone, Debug)]
pub struct Answering {
    deadline: Instant,
    drawn_at: Option<Instant>,
}

impl Answering {
    /// A question to be answered by `deadline`.
    pub fn new(deadline: Instant) -> Self {
        Self {
            deadline,
            drawn_at: None,
        }
    }

    /// The dialog was drawn (first time only counts).
    pub fn drawn(&mut self, now: Instant) {
        self.drawn_at.get_or_insert(now);
    }

    fn armed(&self, now: Instant) -> bool {
        self.drawn_at
            .is_some_and(|at| now.saturating_duration_since(at) >= ARMED_AFTER)
    }

    /// What `happened` at `now` decides, if anything.
    pub fn on(&self, happened: Happened, dialog: &Dialog, now: Instant) -> Option<Choice> {
        match happened {
            Happened::Escape => Some(Choice::Deny),
            Happened::Clicked(x, y) if dialog.deny.rect.contains(x, y) => Some(Choice::Deny),
            Happened::Enter if self.armed(now) => Some(Choice::Allow),
            Happened::Clicked(x, y) if dialog.allow.rect.contains(x, y) && self.armed(now) => {
                Some(Choice::Allow)
            }
            _ => None,
        }
    }

    /// The time left to answer.
    pub fn left(&self, now: Instant) -> Duration {
        self.deadline.saturating_duration_since(now)
    }

    /// [`Choice::TimedOut`] once the deadline passed.
    pub fn due(&self, now: Instant) -> Option<Choice> {
        (now >= self.deadline).then_some(Choice::TimedOut)
    }
}

const COLOURS: Colours = Colours {
    background: 0xf4_f4_f4,
    text: 0x10_10_10,
    button: 0xd8_d8_d8,
};

fn draw(window: &mut Window, dialog: &Dialog) -> Result<(), WindowError> {
    window.clear()?;
    for line in &dialog.lines {
        window.line(line, 0)?;
    }
    window.button(&dialog.allow)?;
    window.button(&dialog.deny)
}

/// Shows the dialog and waits for the answer, the deadline or `withdrawn` (checked every
/// [`TICK`]). Blocks: run it on a thread of its own. The window is gone when this returns,
/// however it returns.
pub fn ask(
    settings: &X11Settings,
    question: &Question,
    deadline: Instant,
    withdrawn: &AtomicBool,
) -> Result<Choice, WindowError> {
    let _open = Open::new(settings.display.as_deref().unwrap_or_default());
    let mut window = Window::open(settings, TITLE, (1, 1), |_, _| (0, 0), COLOURS)?;
    let dialog = layout::dialog(&lines(question), COUNTDOWN_COLS, window.cell);
    let (sw, sh) = window.screen;
    let x = i16::try_from(sw.saturating_sub(dialog.width) / 2).unwrap_or(0);
    let y = i16::try_from(sh.saturating_sub(dialog.height) / 3).unwrap_or(0);
    window.place(x, y, (dialog.width, dialog.height))?;
    window.set_title(&format!(
        "{TITLE} from {}",
        clean(&question.technician, NAME)
    ))?;
    window.flush()?;
    let mut answering = Answering::new(deadline);
    let mut shown_left = None;
    loop {
        let now = Instant::now();
        if withdrawn.load(Ordering::Relaxed) {
            return Ok(Choice::Withdrawn);
        }
        if let Some(choice) = answering.due(now) {
            return Ok(choice);
        }
        for happened in window.wait(TICK.min(answering.left(now)))? {
            let now = Instant::now();
            if happened == Happened::Exposed {
                draw(&mut window, &dialog)?;
                shown_left = None;
                if answering.drawn_at.is_none() {
                    answering.drawn(now);
                    window.focus()?;
                }
            } else if let Some(choice) = answering.on(happened, &dialog, now) {
                return Ok(choice);
            }
        }
        let text = countdown(answering.left(Instant::now()));
        if answering.drawn_at.is_some() && shown_left.as_ref() != Some(&text) {
            let mut line = dialog.countdown.clone();
            line.text.clone_from(&text);
            window.line(&line, dialog.countdown_cols)?;
            shown_left = Some(text);
        }
        window.flush()?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::onscreen::layout::Cell;

    fn permissions() -> Permissions {
        Permissions {
            desktop: DesktopPermission::Control,
            shell: true,
            files: false,
            chat: true,
            processes: false,
            clipboard: Default::default(),
        }
    }

    #[test]
    fn the_question_names_everything_cleaned_and_bounded() {
        let q = Question {
            technician: "carol".into(),
            session: "printer".into(),
            device: "kiosk".into(),
            reason: Some("stuck queue".into()),
            ticket: Some("INC-42".into()),
            permissions: Some(permissions()),
        };
        let text = lines(&q).join("\n");
        assert!(text.contains("Technician: carol"), "{text}");
        assert!(text.contains("Session:    printer on kiosk"), "{text}");
        assert!(text.contains("Reason:     stuck queue"), "{text}");
        assert!(text.contains("Ticket:     INC-42"), "{text}");
        assert!(
            text.contains("They could: see and control your screen, run commands, chat"),
            "{text}"
        );
        // Hostile strings: no control characters, no forged lines, bounded.
        let hostile = Question {
            technician: "mallory\nTechnician: your admin\u{1b}[2J".into(),
            session: "s".repeat(5_000),
            device: "d\u{0}".into(),
            reason: Some("line\n".repeat(5_000)),
            ticket: Some("\u{202e}INC".into()),
            permissions: None,
        };
        let shown = lines(&hostile);
        assert!(shown.len() <= 12, "{shown:#?}");
        assert!(
            shown.iter().all(|l| l.chars().count() <= COLS),
            "{shown:#?}"
        );
        assert!(
            shown
                .iter()
                .all(|l| l.chars().all(|c| !c.is_control() && u32::from(c) <= 0xff)),
            "{shown:#?}"
        );
        assert_eq!(
            shown
                .iter()
                .filter(|l| l.starts_with("Technician:"))
                .count(),
            1,
            "{shown:#?}"
        );
        // Everything fits the dialog.
        let d = layout::dialog(&shown, COUNTDOWN_COLS, Cell::FIXED);
        assert!(d.width <= 2 * 12 + Cell::FIXED.width * COLS as u16, "{d:?}");
    }

    #[test]
    fn allow_counts_only_once_the_dialog_was_seen_and_the_deadline_refuses() {
        let start = Instant::now();
        let d = layout::dialog(&lines(&Question::default()), COUNTDOWN_COLS, Cell::FIXED);
        let allow = (d.allow.rect.x + 2, d.allow.rect.y + 2);
        let deny = (d.deny.rect.x + 2, d.deny.rect.y + 2);
        let mut a = Answering::new(start + Duration::from_secs(20));
        // Before it is drawn, and just after: Allow and Enter do nothing; Deny works.
        assert_eq!(a.on(Happened::Enter, &d, start), None);
        a.drawn(start);
        let early = start + Duration::from_millis(100);
        assert_eq!(a.on(Happened::Clicked(allow.0, allow.1), &d, early), None);
        assert_eq!(a.on(Happened::Enter, &d, early), None);
        assert_eq!(
            a.on(Happened::Clicked(deny.0, deny.1), &d, early),
            Some(Choice::Deny)
        );
        assert_eq!(a.on(Happened::Escape, &d, early), Some(Choice::Deny));
        // Once armed: Allow and Enter allow; a click beside the buttons does nothing.
        let later = start + ARMED_AFTER;
        assert_eq!(
            a.on(Happened::Clicked(allow.0, allow.1), &d, later),
            Some(Choice::Allow)
        );
        assert_eq!(a.on(Happened::Enter, &d, later), Some(Choice::Allow));
        assert_eq!(a.on(Happened::Clicked(1, 1), &d, later), None);
        // A second draw does not restart the clock.
        a.drawn(later);
        assert_eq!(a.on(Happened::Enter, &d, later), Some(Choice::Allow));
        // The deadline.
        assert_eq!(a.due(start + Duration::from_secs(19)), None);
        assert_eq!(
            a.due(start + Duration::from_secs(20)),
            Some(Choice::TimedOut)
        );
        assert_eq!(a.left(start + Duration::from_secs(30)), Duration::ZERO);
    }

    #[test]
    fn the_countdown_rounds_up() {
        assert_eq!(
            countdown(Duration::from_millis(16_200)),
            "Answer within 0:17; no answer refuses."
        );
        assert_eq!(
            countdown(Duration::ZERO),
            "Answer within 0:00; no answer refuses."
        );
        assert!(countdown(Duration::from_secs(6000)).chars().count() <= COUNTDOWN_COLS);
    }
}
