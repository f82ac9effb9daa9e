//! The viewing notice: while any desktop channel is open, a bar at the top of the user's
//! screen says that it is being viewed or controlled, by whom, the session's countdown once
//! under two minutes, and offers End session for each session. It goes away when the last
//! viewer leaves.
//!
//! The bar is on the screen it tells about, so it is in what the technicians see too; that
//! is honest, and it is small. One thread, owned by [`Notices`] and stopped when the last
//! clone is dropped, shows it: it waits (without polling) while nobody views, and holds its
//! own X connection only while the bar is up. End session asks the agent to end the
//! session exactly as `tether-agent end` does (a request in the control directory).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use tracing::{info, warn};

use super::layout::{self, Bar};
use super::text::{clean, mm_ss};
use super::window::{Colours, Happened, Window};
use crate::desktop::x11::X11Settings;
use crate::sessions::{self, Sessions};

/// The start of the notice's window name (what `xdotool search --name` finds); what the
/// bar says follows it.
pub const TITLE: &str = "Tether: screen shared";

/// Under this much time left, the bar shows the session's countdown.
pub const COUNTDOWN_FROM: i64 = 120;

/// How often the bar is refreshed while it is up.
const TICK: Duration = Duration::from_millis(250);

/// How long after a failure to show the bar it is tried again (sooner when viewers change).
const RETRY: Duration = Duration::from_secs(5);

/// The longest a name is shown in the bar.
const NAME: usize = 40;

/// The most sessions the bar lists (one row each).
const MAX_ROWS: usize = 4;

/// One open desktop channel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Viewer {
    /// The session's uid.
    pub session_uid: String,
    /// The technician, as the relay named them.
    pub technician: String,
    /// Whether their input reaches the device.
    pub control: bool,
}

/// One row of the bar: a session and who views it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Row {
    /// The session's uid (what End session ends).
    pub session_uid: String,
    /// What the row says.
    pub text: String,
}

/// The bar's rows for `viewers` at `now` (Unix seconds): one per session, in the order their
/// first viewer came, naming the session, who controls and who watches (each once), and the
/// countdown when under [`COUNTDOWN_FROM`]. `session` gives a session's name and end.
pub fn rows(
    viewers: &[Viewer],
    session: impl Fn(&str) -> Option<(String, i64)>,
    now: i64,
) -> Vec<Row> {
    let mut order: Vec<&str> = Vec::new();
    for v in viewers {
        if !order.contains(&v.session_uid.as_str()) {
            order.push(&v.session_uid);
        }
    }
    order
        .into_iter()
        .take(MAX_ROWS)
        .map(|uid| {
            let (name, ends_at) = session(uid).unwrap_or_default();
            let name = if name.is_empty() { uid } else { &name };
            // Each technician once: controlling if any of their channels has control.
            let mut who: Vec<(String, bool)> = Vec::new();
            for v in viewers.iter().filter(|v| v.session_uid == uid) {
                let name = clean(&v.technician, NAME);
                match who.iter_mut().find(|(n, _)| *n == name) {
                    Some((_, control)) => *control |= v.control,
                    None => who.push((name, v.control)),
                }
            }
            let list = |control: bool| {
                who.iter()
                    .filter(|(_, c)| *c == control)
                    .map(|(n, _)| n.as_str())
                    .collect::<Vec<_>>()
            };
            let (controlling, watching) = (list(true), list(false));
            let mut parts = Vec::new();
            if !controlling.is_empty() {
                parts.push(format!("controlled by {}", controlling.join(", ")));
            }
            if !watching.is_empty() {
                parts.push(format!("viewed by {}", watching.join(", ")));
            }
            let mut text = format!(
                "Your screen is being {} (session {})",
                parts.join(" and "),
                clean(name, NAME)
            );
            let left = ends_at - now;
            if ends_at > 0 && left <= COUNTDOWN_FROM {
                text.push_str(&format!(" - ends in {}", mm_ss(left.max(0) as u64)));
            }
            Row {
                session_uid: uid.to_owned(),
                text,
            }
        })
        .collect()
}

#[derive(Default)]
struct State {
    viewers: BTreeMap<u64, Viewer>,
    next: u64,
    /// Bumped on every change, so the thread notices changes it slept through.
    generation: u64,
    stop: bool,
}

struct Shared {
    state: Mutex<State>,
    changed: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Stops and joins the thread when the last [`Notices`] goes.
struct Owner {
    shared: Arc<Shared>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Drop for Owner {
    fn drop(&mut self) {
        self.shared.lock().stop = true;
        self.shared.changed.notify_all();
        let thread = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(thread) = thread {
            let _ = thread.join();
        }
    }
}

/// Who views the screen now, and the bar that says so. Cheap to clone.
#[derive(Clone)]
pub struct Notices {
    owner: Arc<Owner>,
}

impl std::fmt::Debug for Notices {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Notices").finish_non_exhaustive()
    }
}

/// One viewer counted in the notice; dropping it removes them.
pub struct Watching {
    shared: Arc<Shared>,
    id: u64,
}

impl Drop for Watching {
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        state.viewers.remove(&self.id);
        state.generation += 1;
        drop(state);
        self.shared.changed.notify_all();
    }
}

impl Notices {
    /// The notice for `display` (none: viewers are counted, nothing is shown); End session
    /// leaves its request in `control_dir`, and session names and ends come from `live`.
    pub fn new(display: Option<X11Settings>, live: Sessions, control_dir: PathBuf) -> Self {
        let shared = Arc::new(Shared {
            state: Mutex::default(),
            changed: Condvar::new(),
        });
        let thread = display.map(|display| {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("viewing-notice".into())
                .spawn(move || run(&shared, &display, &live, &control_dir))
        });
        let thread = match thread {
            Some(Ok(t)) => Some(t),
            Some(Err(e)) => {
                warn!(error = %e, "Failed to start the viewing notice");
                None
            }
            None => None,
        };
        Self {
            owner: Arc::new(Owner {
                shared,
                thread: Mutex::new(thread),
            }),
        }
    }

    /// Counts `viewer` until the returned guard is dropped.
    pub fn watch(&self, viewer: Viewer) -> Watching {
        let shared = self.owner.shared.clone();
        let mut state = shared.lock();
        state.next += 1;
        let id = state.next;
        state.viewers.insert(id, viewer);
        state.generation += 1;
        drop(state);
        shared.changed.notify_all();
        Watching { shared, id }
    }

    /// The viewers counted now.
    #[cfg(test)]
    pub fn viewers(&self) -> Vec<Viewer> {
        self.owner.shared.lock().viewers.values().cloned().collect()
    }
}

const COLOURS: Colours = Colours {
    background: 0xff_d7_5e,
    text: 0x00_00_00,
    button: 0xff_f2_c4,
};

fn current(shared: &Shared, live: &Sessions) -> Vec<Row> {
    let viewers: Vec<Viewer> = shared.lock().viewers.values().cloned().collect();
    rows(
        &viewers,
        |uid| live.get(uid).map(|s| (s.name, s.ends_at)),
        jiff::Timestamp::now().as_second(),
    )
}

fn draw(window: &mut Window, bar: &Bar) -> Result<(), super::window::WindowError> {
    window.clear()?;
    for line in &bar.lines {
        window.line(line, 0)?;
    }
    for button in &bar.buttons {
        window.button(button)?;
    }
    Ok(())
}

/// The thread: the bar up while anyone views, down otherwise, until stopped.
fn run(shared: &Shared, display: &X11Settings, live: &Sessions, control_dir: &std::path::Path) {
    loop {
        // Nobody views: wait for a viewer (or the stop).
        {
            let mut state = shared.lock();
            while state.viewers.is_empty() && !state.stop {
                state = shared
                    .changed
                    .wait(state)
                    .unwrap_or_else(|e| e.into_inner());
            }
            if state.stop {
                return;
            }
        }
        if let Err(e) = show(shared, display, live, control_dir) {
            warn!(error = %tether_telemetry::error_chain(&e), "Failed to show the viewing notice on the screen");
            // Try again later, or as soon as the viewers change.
            let state = shared.lock();
            let seen = state.generation;
            let _ = shared
                .changed
                .wait_timeout_while(state, RETRY, |s| s.generation == seen && !s.stop);
        }
    }
}

/// Shows the bar until nobody views (or the stop); the window is gone when this returns.
fn show(
    shared: &Shared,
    display: &X11Settings,
    live: &Sessions,
    control_dir: &std::path::Path,
) -> Result<(), super::window::WindowError> {
    let mut window = Window::open(display, TITLE, (1, 1), |_, _| (0, 0), COLOURS)?;
    info!("Showed the user that their screen is being viewed");
    let mut shown: Option<(Vec<Row>, Bar)> = None;
    loop {
        if shared.lock().stop {
            return Ok(());
        }
        let rows = current(shared, live);
        if rows.is_empty() {
            info!("Took down the viewing notice: nobody views the screen");
            return Ok(());
        }
        if shown.as_ref().map(|(r, _)| r) != Some(&rows) {
            let texts: Vec<String> = rows.iter().map(|r| r.text.clone()).collect();
            let bar = layout::bar(&texts, window.cell);
            let x = i16::try_from(window.screen.0.saturating_sub(bar.width) / 2).unwrap_or(0);
            window.place(x, 0, (bar.width, bar.height))?;
            draw(&mut window, &bar)?;
            window.set_title(&format!("{TITLE}: {}", texts.join(" | ")))?;
            shown = Some((rows, bar));
        }
        window.flush()?;
        for happened in window.wait(TICK)? {
            let Some((rows, bar)) = &shown else { continue };
            match happened {
                Happened::Exposed => draw(&mut window, bar)?,
                Happened::Clicked(x, y) => {
                    let hit = bar.buttons.iter().position(|b| b.rect.contains(x, y));
                    if let Some(row) = hit.and_then(|i| rows.get(i)) {
                        info!(session = %row.session_uid, "Ending the remote session: the user clicked End session on the viewing notice");
                        if let Err(e) = sessions::request_end(control_dir, &row.session_uid) {
                            warn!(error = %e, "Failed to ask for the end of a remote session");
                        }
                    }
                }
                Happened::Enter | Happened::Escape => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn viewer(uid: &str, technician: &str, control: bool) -> Viewer {
        Viewer {
            session_uid: uid.into(),
            technician: technician.into(),
            control,
        }
    }

    #[test]
    fn the_bar_names_everyone_once_per_session() {
        let now = 1_000;
        let info = |uid: &str| match uid {
            "u-a" => Some(("printer".to_owned(), now + 3600)),
            "u-b" => Some(("wifi".to_owned(), now + 90)),
            _ => None,
        };
        let viewers = [
            viewer("u-a", "carol", true),
            viewer("u-a", "dave", false),
            // carol's second viewer, and a view-only one of hers: still just "controlled".
            viewer("u-a", "carol", true),
            viewer("u-a", "carol", false),
            viewer("u-b", "erin\n\u{1b}[2J", false),
            viewer("u-c", "frank", false),
        ];
        let shown = rows(&viewers, info, now);
        assert_eq!(shown.len(), 3);
        assert_eq!(
            shown[0].text,
            "Your screen is being controlled by carol and viewed by dave (session printer)"
        );
        assert_eq!(shown[0].session_uid, "u-a");
        // Under two minutes left: the countdown; hostile names cleaned.
        assert_eq!(
            shown[1].text,
            "Your screen is being viewed by erin [2J (session wifi) - ends in 1:30"
        );
        // A session the agent knows nothing about yet is named by its uid.
        assert_eq!(
            shown[2].text,
            "Your screen is being viewed by frank (session u-c)"
        );
        assert!(rows(&[], info, now).is_empty());
    }

    #[test]
    fn the_bar_is_bounded() {
        let many: Vec<Viewer> = (0..20)
            .map(|i| viewer(&format!("u-{i}"), &"x".repeat(500), false))
            .collect();
        let shown = rows(&many, |_| None, 0);
        assert_eq!(shown.len(), MAX_ROWS);
        assert!(
            shown.iter().all(|r| r.text.chars().count() < 160),
            "{shown:?}"
        );
    }

    #[test]
    fn viewers_are_counted_while_watched() {
        let dir = tempfile::tempdir().unwrap();
        let notices = Notices::new(None, Sessions::new(dir.path()), dir.path().join("control"));
        let a = notices.watch(viewer("u-a", "carol", true));
        let b = notices.watch(viewer("u-a", "dave", false));
        assert_eq!(notices.viewers().len(), 2);
        drop(a);
        assert_eq!(notices.viewers(), vec![viewer("u-a", "dave", false)]);
        drop(b);
        assert!(notices.viewers().is_empty());
    }
}
