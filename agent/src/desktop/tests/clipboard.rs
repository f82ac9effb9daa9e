//! The clipboard against Xvfb: a technician's text becomes the X CLIPBOARD selection and
//! another X client's selection reaches the viewer, each only with its direction's grant,
//! UTF-8 intact over Extended Clipboard, and texts over the cap dropped.

use std::io::{Read, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use flate2::Compression;
use flate2::read::ZlibDecoder;
use flate2::write::ZlibEncoder;
use tether_rfb::client::clipboard_action as action;
use tether_rfb::encoding;
use x11rb::connection::Connection;
use x11rb::protocol::Event;
use x11rb::protocol::xproto::{self, Atom, AtomEnum, ConnectionExt as _, EventMask, PropMode};
use x11rb::rust_connection::RustConnection;
use x11rb::wrapper::ConnectionExt as _;

use super::x11::{finish, open, settings};
use super::*;
use crate::desktop::backend::MAX_CLIPBOARD;
use crate::desktop::{Desktops, Grant};

const TEXT: u32 = 1;

fn grant(to_device: bool, from_device: bool) -> Grant {
    Grant {
        control: true,
        clipboard_to_device: to_device,
        clipboard_from_device: from_device,
    }
}

fn atom(conn: &RustConnection, name: &str) -> Atom {
    conn.intern_atom(false, name.as_bytes())
        .unwrap()
        .reply()
        .unwrap()
        .atom
}

fn input_only_window(conn: &RustConnection) -> xproto::Window {
    let id = conn.generate_id().unwrap();
    conn.create_window(
        0,
        id,
        root(conn),
        0,
        0,
        1,
        1,
        0,
        xproto::WindowClass::INPUT_ONLY,
        x11rb::COPY_FROM_PARENT,
        &xproto::CreateWindowAux::new(),
    )
    .unwrap();
    id
}

/// The X server's CLIPBOARD owner.
fn owner(conn: &RustConnection) -> xproto::Window {
    let clipboard = atom(conn, "CLIPBOARD");
    conn.get_selection_owner(clipboard)
        .unwrap()
        .reply()
        .unwrap()
        .owner
}

/// CLIPBOARD's text as UTF8_STRING, as any application on the device would paste it;
/// `None` when there is no owner or it gives none within a few seconds.
fn paste(conn: &RustConnection) -> Option<String> {
    let (clipboard, utf8, property) = (
        atom(conn, "CLIPBOARD"),
        atom(conn, "UTF8_STRING"),
        atom(conn, "TEST_PASTE"),
    );
    let window = input_only_window(conn);
    conn.convert_selection(window, clipboard, utf8, property, x11rb::CURRENT_TIME)
        .unwrap();
    conn.flush().unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut pasted = None;
    while Instant::now() < deadline {
        match conn.poll_for_event().unwrap() {
            Some(Event::SelectionNotify(e)) if e.requestor == window => {
                if e.property != x11rb::NONE {
                    let reply = conn
                        .get_property(true, window, property, AtomEnum::ANY, 0, u32::MAX / 4)
                        .unwrap()
                        .reply()
                        .unwrap();
                    pasted = Some(String::from_utf8(reply.value).unwrap());
                }
                break;
            }
            Some(_) => {}
            None => std::thread::sleep(Duration::from_millis(5)),
        }
    }
    conn.destroy_window(window).unwrap();
    conn.flush().unwrap();
    pasted
}

/// Another application on the device owning CLIPBOARD with `text`, answering requests
/// until it is dropped or another client takes the selection.
struct Owner {
    stop: Arc<AtomicBool>,
    /// A requestor read the text (and deleted the property it was put in).
    taken: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Owner {
    fn start(xvfb: &Xvfb, text: Vec<u8>) -> Self {
        let conn = xvfb.connect();
        let (clipboard, utf8, targets) = (
            atom(&conn, "CLIPBOARD"),
            atom(&conn, "UTF8_STRING"),
            atom(&conn, "TARGETS"),
        );
        let window = input_only_window(&conn);
        conn.set_selection_owner(window, clipboard, x11rb::CURRENT_TIME)
            .unwrap();
        assert_eq!(owner(&conn), window, "the test's client owns CLIPBOARD");
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let taken = Arc::new(AtomicBool::new(false));
        let taking = taken.clone();
        let mut given = None;
        let thread = std::thread::spawn(move || {
            while !stopping.load(Ordering::Relaxed) {
                let Some(event) = conn.poll_for_event().unwrap() else {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                };
                match event {
                    Event::SelectionRequest(e) => {
                        let property = if e.target == utf8 {
                            // To see the requestor delete the property once it read it.
                            conn.change_window_attributes(
                                e.requestor,
                                &xproto::ChangeWindowAttributesAux::new()
                                    .event_mask(EventMask::PROPERTY_CHANGE),
                            )
                            .unwrap();
                            given = Some((e.requestor, e.property));
                            conn.change_property8(
                                PropMode::REPLACE,
                                e.requestor,
                                e.property,
                                utf8,
                                &text,
                            )
                            .unwrap();
                            e.property
                        } else if e.target == targets {
                            conn.change_property32(
                                PropMode::REPLACE,
                                e.requestor,
                                e.property,
                                AtomEnum::ATOM,
                                &[targets, utf8],
                            )
                            .unwrap();
                            e.property
                        } else {
                            x11rb::NONE
                        };
                        let notify = xproto::SelectionNotifyEvent {
                            response_type: xproto::SELECTION_NOTIFY_EVENT,
                            sequence: 0,
                            time: e.time,
                            requestor: e.requestor,
                            selection: e.selection,
                            target: e.target,
                            property,
                        };
                        conn.send_event(false, e.requestor, EventMask::NO_EVENT, notify)
                            .unwrap();
                        conn.flush().unwrap();
                    }
                    Event::PropertyNotify(e)
                        if given == Some((e.window, e.atom))
                            && e.state == xproto::Property::DELETE =>
                    {
                        taking.store(true, Ordering::Relaxed);
                    }
                    Event::SelectionClear(_) => break,
                    _ => {}
                }
            }
        });
        Self {
            stop,
            taken,
            thread: Some(thread),
        }
    }
}

impl Drop for Owner {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// ClientCutText with Latin-1 `bytes`.
fn cut_text(bytes: &[u8]) -> Vec<u8> {
    let mut out = vec![6, 0, 0, 0];
    out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
    out.extend_from_slice(bytes);
    out
}

/// ClientCutText in Extended Clipboard form.
fn extended(flags: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![6, 0, 0, 0];
    out.extend_from_slice(&(-(4 + payload.len() as i32)).to_be_bytes());
    out.extend_from_slice(&flags.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// An Extended Clipboard `provide` payload with `text` (as the viewer writes it).
fn provide_payload(text: &str) -> Vec<u8> {
    let mut plain = ((text.len() + 1) as u32).to_be_bytes().to_vec();
    plain.extend_from_slice(text.as_bytes());
    plain.push(0);
    let mut encoder = ZlibEncoder::new(Vec::new(), Compression::default());
    encoder.write_all(&plain).unwrap();
    encoder.finish().unwrap()
}

/// The text in a `provide` payload from the server.
fn provided_text(payload: &[u8]) -> String {
    let mut plain = Vec::new();
    ZlibDecoder::new(payload).read_to_end(&mut plain).unwrap();
    let len = u32::from_be_bytes(plain[..4].try_into().unwrap()) as usize;
    assert_eq!(len, plain.len() - 4, "one format, text");
    assert_eq!(plain.last(), Some(&0), "the text ends in a NUL");
    String::from_utf8(plain[4..plain.len() - 1].to_vec()).unwrap()
}

impl Viewer {
    /// Reads the ServerFence that announces fences.
    async fn fence_announced(&mut self) {
        assert!(matches!(self.message().await, Message::Fence { .. }));
    }

    /// A fence round trip: everything the server sent before answering it (the server
    /// handles the viewer's messages in order, so what the viewer sent before is done).
    async fn round_trip(&mut self) -> Vec<Message> {
        let mut fence = vec![248, 0, 0, 0];
        fence.extend_from_slice(&(1u32 << 31).to_be_bytes());
        fence.extend_from_slice(&[1, 42]);
        self.send(&fence).await;
        let mut before = Vec::new();
        for _ in 0..100 {
            match self.message().await {
                Message::Fence { payload, .. } if payload == [42] => return before,
                other => before.push(other),
            }
        }
        panic!("no answer to the fence among 100 messages");
    }

    /// The next ServerCutText's bytes (of either form: (flags, bytes) with flags 0 for plain).
    async fn cut_text(&mut self) -> (u32, Vec<u8>) {
        for _ in 0..100 {
            match self.message().await {
                Message::CutText(bytes) => return (0, bytes),
                Message::ExtendedCutText { flags, payload } => return (flags, payload),
                _ => {}
            }
        }
        panic!("no ServerCutText among 100 messages");
    }
}

fn is_cut_text(m: &Message) -> bool {
    matches!(m, Message::CutText(_) | Message::ExtendedCutText { .. })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_technicians_text_is_the_devices_clipboard_only_with_clipboard_to_device() {
    let xvfb = Xvfb::start(64, 64, &[]);
    let conn = xvfb.connect();
    let desktops = Desktops::default();

    let (mut denied, denied_served) = open(&desktops, settings(&xvfb), grant(false, true));
    denied.handshake(&[encoding::RAW, encoding::FENCE]).await;
    denied.fence_announced().await;
    denied.send(&cut_text(b"not for the device")).await;
    denied.round_trip().await;
    assert_eq!(owner(&conn), x11rb::NONE, "nobody took the clipboard");
    let stats = finish(denied, denied_served).await;
    assert_eq!((stats.dropped_clipboard, stats.clipboard_to_device), (1, 0));

    let (mut allowed, allowed_served) = open(&desktops, settings(&xvfb), grant(true, false));
    allowed.handshake(&[encoding::RAW]).await;
    allowed
        .send(&cut_text(b"caf\xe9 from the technician"))
        .await;
    let mut pasted = None;
    assert!(
        eventually(|| {
            pasted = paste(&conn);
            pasted.as_deref() == Some("café from the technician")
        })
        .await,
        "the device pastes the technician's text (got {pasted:?})"
    );
    let stats = finish(allowed, allowed_served).await;
    assert_eq!((stats.dropped_clipboard, stats.clipboard_to_device), (0, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_devices_clipboard_reaches_only_viewers_allowed_it() {
    let xvfb = Xvfb::start(64, 64, &[]);
    let desktops = Desktops::default();
    let (mut allowed, allowed_served) = open(&desktops, settings(&xvfb), grant(false, true));
    allowed.handshake(&[encoding::RAW, encoding::FENCE]).await;
    allowed.fence_announced().await;
    let (mut denied, denied_served) = open(&desktops, settings(&xvfb), grant(true, false));
    denied.handshake(&[encoding::RAW, encoding::FENCE]).await;
    denied.fence_announced().await;
    // Both are being served (and watching whatever they may) before the clipboard changes.
    allowed.round_trip().await;
    denied.round_trip().await;

    let _owner = Owner::start(&xvfb, "from the device: café ✓".as_bytes().to_vec());
    assert_eq!(
        allowed.cut_text().await,
        (0, b"from the device: caf\xe9 ?".to_vec()),
        "a plain viewer gets Latin-1, ? for the rest"
    );
    // The allowed viewer has it, so the denied one would have it by now.
    let before = denied.round_trip().await;
    assert!(!before.iter().any(is_cut_text), "{before:?}");

    let stats = finish(allowed, allowed_served).await;
    assert_eq!(stats.clipboard_from_device, 1);
    let stats = finish(denied, denied_served).await;
    assert_eq!(stats.clipboard_from_device, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_extended_clipboard_viewer_sends_and_receives_utf8_intact() {
    let xvfb = Xvfb::start(64, 64, &[]);
    let conn = xvfb.connect();
    let desktops = Desktops::default();
    let (mut viewer, served) = open(&desktops, settings(&xvfb), grant(true, true));
    viewer
        .handshake(&[encoding::RAW, encoding::EXTENDED_CLIPBOARD])
        .await;
    let Message::ExtendedCutText { flags, payload } = viewer.message().await else {
        panic!("the server announces its Extended Clipboard capabilities");
    };
    let all = action::REQUEST | action::PEEK | action::NOTIFY | action::PROVIDE;
    assert_eq!(flags, action::CAPS | all | TEXT);
    assert_eq!(payload, (MAX_CLIPBOARD as u32).to_be_bytes());
    let mut caps = (MAX_CLIPBOARD as u32).to_be_bytes().to_vec();
    caps.extend_from_slice(&[0, 0, 0, 0]); // rtf's size: another format, ignored
    viewer
        .send(&extended(action::CAPS | all | TEXT | 2, &caps))
        .await;

    // The viewer's clipboard changed: it says so, the server asks, the viewer provides.
    viewer.send(&extended(action::NOTIFY | TEXT, &[])).await;
    assert_eq!(
        viewer.cut_text().await,
        (action::REQUEST | TEXT, Vec::new())
    );
    let payload = provide_payload("Grüße ✓\r\nzweite Zeile");
    viewer
        .send(&extended(action::PROVIDE | TEXT, &payload))
        .await;
    let mut pasted = None;
    assert!(
        eventually(|| {
            pasted = paste(&conn);
            pasted.as_deref() == Some("Grüße ✓\nzweite Zeile")
        })
        .await,
        "the device pastes UTF-8 (got {pasted:?})"
    );

    let _owner = Owner::start(&xvfb, "Grüße ✓ vom Gerät\nEnde".as_bytes().to_vec());
    let (flags, payload) = viewer.cut_text().await;
    assert_eq!(flags, action::PROVIDE | TEXT);
    assert_eq!(provided_text(&payload), "Grüße ✓ vom Gerät\r\nEnde");
    // Peek and request are answered from the device's clipboard.
    viewer.send(&extended(action::PEEK, &[])).await;
    assert_eq!(viewer.cut_text().await, (action::NOTIFY | TEXT, Vec::new()));
    viewer.send(&extended(action::REQUEST | TEXT, &[])).await;
    let (flags, payload) = viewer.cut_text().await;
    assert_eq!(flags, action::PROVIDE | TEXT);
    assert_eq!(provided_text(&payload), "Grüße ✓ vom Gerät\r\nEnde");

    let stats = finish(viewer, served).await;
    assert_eq!(
        (stats.clipboard_to_device, stats.clipboard_from_device),
        (1, 2)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn texts_over_the_cap_are_dropped_and_counted_each_way() {
    let xvfb = Xvfb::start(64, 64, &[]);
    let conn = xvfb.connect();
    let desktops = Desktops::default();
    let (mut viewer, served) = open(&desktops, settings(&xvfb), grant(true, true));
    viewer.handshake(&[encoding::RAW, encoding::FENCE]).await;
    viewer.fence_announced().await;

    viewer.send(&cut_text(&vec![b'a'; MAX_CLIPBOARD + 1])).await;
    viewer.round_trip().await;
    assert_eq!(owner(&conn), x11rb::NONE, "nobody took the clipboard");

    let big = Owner::start(&xvfb, vec![b'b'; MAX_CLIPBOARD + 1]);
    assert!(
        eventually(|| big.taken.load(Ordering::Relaxed)).await,
        "the agent reads the big text"
    );
    // The big text never comes: the next text the viewer gets is the small one after it.
    drop(big);
    let _small = Owner::start(&xvfb, b"small".to_vec());
    assert_eq!(viewer.cut_text().await, (0, b"small".to_vec()));

    let stats = finish(viewer, served).await;
    assert_eq!(
        (stats.dropped_clipboard, stats.clipboard_from_device),
        (2, 1)
    );
}
