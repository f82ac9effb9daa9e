//! The dialog and the notice against Xvfb: they appear under their names, the keyboard and
//! the pointer answer them, and their windows are gone however they end.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use x11rb::connection::Connection;
use x11rb::protocol::xproto::{self, AtomEnum, ConnectionExt as _};
use x11rb::protocol::xtest;
use x11rb::rust_connection::RustConnection;

use super::dialog::{self, Choice, Question};
use super::notice::{self, Notices, Viewer};
use crate::desktop::tests::{PATIENCE, Xvfb};
use crate::desktop::x11::X11Settings;
use crate::sessions::Sessions;

fn settings(x: &Xvfb) -> X11Settings {
    X11Settings {
        display: Some(x.display.clone()),
        xauthority: None,
        users: Vec::new(),
    }
}

/// The top-level windows whose name starts with `prefix`: (id, name, geometry).
fn windows(
    conn: &RustConnection,
    prefix: &str,
) -> Vec<(xproto::Window, String, xproto::GetGeometryReply)> {
    let root = conn.setup().roots[0].root;
    let tree = conn.query_tree(root).unwrap().reply().unwrap();
    tree.children
        .into_iter()
        .filter_map(|w| {
            let name = conn
                .get_property(false, w, AtomEnum::WM_NAME, AtomEnum::STRING, 0, 1024)
                .ok()?
                .reply()
                .ok()?;
            let name = String::from_utf8_lossy(&name.value).into_owned();
            let attributes = conn.get_window_attributes(w).ok()?.reply().ok()?;
            let geometry = conn.get_geometry(w).ok()?.reply().ok()?;
            (name.starts_with(prefix) && attributes.map_state == xproto::MapState::VIEWABLE)
                .then_some((w, name, geometry))
        })
        .collect()
}

fn wait_for(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn question() -> Question {
    Question {
        technician: "carol\n\u{1b}[2J".into(),
        session: "printer".into(),
        device: "kiosk".into(),
        reason: Some("stuck queue".into()),
        ticket: None,
        permissions: None,
    }
}

fn press(conn: &RustConnection, keysym: u32) {
    let setup = conn.setup();
    let (min, max) = (setup.min_keycode, setup.max_keycode);
    let map = conn
        .get_keyboard_mapping(min, max - min + 1)
        .unwrap()
        .reply()
        .unwrap();
    let keymap =
        crate::desktop::x11::keymap::Keymap::new(min, map.keysyms_per_keycode, map.keysyms);
    let code = keymap.keycode(keysym).expect("the key is on the keyboard");
    let root = setup.roots[0].root;
    for kind in [xproto::KEY_PRESS_EVENT, xproto::KEY_RELEASE_EVENT] {
        xtest::fake_input(conn, kind, code, x11rb::CURRENT_TIME, root, 0, 0, 0).unwrap();
    }
    conn.flush().unwrap();
}

fn click(conn: &RustConnection, x: i16, y: i16) {
    let root = conn.setup().roots[0].root;
    xtest::fake_input(
        conn,
        xproto::MOTION_NOTIFY_EVENT,
        0,
        x11rb::CURRENT_TIME,
        root,
        x,
        y,
        0,
    )
    .unwrap();
    for kind in [xproto::BUTTON_PRESS_EVENT, xproto::BUTTON_RELEASE_EVENT] {
        xtest::fake_input(conn, kind, 1, x11rb::CURRENT_TIME, root, 0, 0, 0).unwrap();
    }
    conn.flush().unwrap();
}

/// Asks on a thread of its own, as the agent does.
fn ask(x: &Xvfb, timeout: Duration) -> (Arc<AtomicBool>, std::thread::JoinHandle<Choice>) {
    let withdrawn = Arc::new(AtomicBool::new(false));
    let flag = withdrawn.clone();
    let screen = settings(x);
    let thread = std::thread::spawn(move || {
        dialog::ask(&screen, &question(), Instant::now() + timeout, &flag).unwrap()
    });
    (withdrawn, thread)
}

#[test]
fn the_dialog_is_answered_by_the_keyboard_and_gone_however_it_ends() {
    let x = Xvfb::start(640, 480, &[]);
    let conn = x.connect();

    // Escape denies; the window names the (cleaned) technician and goes with the answer.
    let (_, asked) = ask(&x, PATIENCE * 3);
    wait_for("the dialog is up", || {
        !windows(&conn, dialog::TITLE).is_empty()
    });
    let shown = windows(&conn, dialog::TITLE);
    assert_eq!(shown[0].1, format!("{} from carol [2J", dialog::TITLE));
    // Technicians' input to this display is held back while it is up, not elsewhere's.
    assert!(dialog::is_open(&x.display));
    assert!(!dialog::is_open(":12345"));
    // (Pressed until answered: the dialog takes the focus once it is drawn.)
    while !asked.is_finished() {
        press(&conn, 0xff1b);
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(asked.join().unwrap(), Choice::Deny);
    assert!(windows(&conn, dialog::TITLE).is_empty());
    assert!(!dialog::is_open(&x.display));

    // Enter allows, once the dialog has been up a moment.
    let (_, asked) = ask(&x, PATIENCE * 3);
    wait_for("the dialog is up", || {
        !windows(&conn, dialog::TITLE).is_empty()
    });
    let pressed = Instant::now();
    while !asked.is_finished() {
        assert!(pressed.elapsed() < PATIENCE, "Enter never allowed");
        press(&conn, 0xff0d);
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(asked.join().unwrap(), Choice::Allow);
    assert!(
        pressed.elapsed() >= dialog::ARMED_AFTER / 2,
        "Enter counted the moment the dialog appeared"
    );
    assert!(windows(&conn, dialog::TITLE).is_empty());

    // No answer: refused at the deadline, window gone.
    let (_, asked) = ask(&x, Duration::from_millis(800));
    assert_eq!(asked.join().unwrap(), Choice::TimedOut);
    assert!(windows(&conn, dialog::TITLE).is_empty());

    // Withdrawn (the session ended while asking): gone too.
    let (withdrawn, asked) = ask(&x, PATIENCE * 3);
    wait_for("the dialog is up", || {
        !windows(&conn, dialog::TITLE).is_empty()
    });
    withdrawn.store(true, Ordering::Relaxed);
    assert_eq!(asked.join().unwrap(), Choice::Withdrawn);
    assert!(windows(&conn, dialog::TITLE).is_empty());

    // A display that is not there: an error, not a hang and not a yes.
    let gone = X11Settings {
        display: Some(":999".into()),
        ..settings(&x)
    };
    let refused = dialog::ask(
        &gone,
        &question(),
        Instant::now() + PATIENCE,
        &AtomicBool::new(false),
    );
    assert!(refused.is_err());
}

#[test]
fn the_notice_is_up_while_anyone_views_and_ends_the_session_it_names() {
    let x = Xvfb::start(800, 600, &[]);
    let conn = x.connect();
    let dir = tempfile::tempdir().unwrap();
    let control = dir.path().join("control");
    let live = Sessions::new(dir.path());
    let notices = Notices::new(Some(settings(&x)), live, control.clone());
    assert!(windows(&conn, notice::TITLE).is_empty());

    let carol = notices.watch(Viewer {
        session_uid: "u-a".into(),
        technician: "carol".into(),
        control: true,
    });
    let dave = notices.watch(Viewer {
        session_uid: "u-a".into(),
        technician: "dave".into(),
        control: false,
    });
    wait_for("the notice names both", || {
        windows(&conn, notice::TITLE)
            .first()
            .is_some_and(|w| w.1.contains("controlled by carol and viewed by dave"))
    });
    let (_, _, geometry) = windows(&conn, notice::TITLE).remove(0);
    assert_eq!(geometry.y, 0);
    // End session: a request for that session in the control directory, as `tether-agent end`.
    let (bx, by) = (geometry.x + geometry.width as i16 - 20, geometry.y + 10);
    click(&conn, bx, by);
    wait_for("End session asked for the end", || {
        std::fs::read_dir(&control).is_ok_and(|entries| {
            entries
                .flatten()
                .any(|e| std::fs::read_to_string(e.path()).is_ok_and(|t| t == "u-a"))
        })
    });
    // One viewer left: still up, naming only them.
    drop(carol);
    wait_for("the notice names dave only", || {
        windows(&conn, notice::TITLE)
            .first()
            .is_some_and(|w| w.1.ends_with("viewed by dave (session u-a)"))
    });
    // The last one leaves: the notice goes.
    drop(dave);
    wait_for("the notice is gone", || {
        windows(&conn, notice::TITLE).is_empty()
    });
    // Back when someone views again; gone with the agent.
    let _again = notices.watch(Viewer {
        session_uid: "u-b".into(),
        technician: "erin".into(),
        control: false,
    });
    wait_for("the notice is back", || {
        !windows(&conn, notice::TITLE).is_empty()
    });
    drop(notices);
    wait_for("the notice is gone with the agent", || {
        windows(&conn, notice::TITLE).is_empty()
    });
}
