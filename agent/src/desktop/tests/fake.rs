//! The server against a back-end of the test's own, for what Xvfb cannot do: change size.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tether_rfb::encoding;
use tether_rfb::server::Rect;

use super::*;
use crate::desktop::backend::{
    Backend, Capture, ChangeTracker, Changes, CursorShape, CursorSource, DesktopError, Input, Size,
};
use crate::desktop::capture::{Desktops, Pacing};
use crate::desktop::server::{ViewerOptions, serve};

/// A screen of one colour whose size the test sets.
#[derive(Clone)]
struct FakeScreen(Arc<Mutex<(Size, bool)>>);

impl Capture for FakeScreen {
    fn size(&self) -> Size {
        self.0.lock().unwrap().0
    }
    fn grab(&mut self, region: Rect, out: &mut Vec<u8>) -> Result<(), DesktopError> {
        out.clear();
        out.resize(4 * region.area(), 0x40);
        Ok(())
    }
}

impl ChangeTracker for FakeScreen {
    fn reports_damage(&self) -> bool {
        false
    }
    fn wait(&mut self, timeout: Duration) -> Result<Changes, DesktopError> {
        std::thread::sleep(timeout.min(Duration::from_millis(5)));
        let resized = std::mem::take(&mut self.0.lock().unwrap().1);
        Ok(Changes {
            resized,
            ..Changes::default()
        })
    }
}

impl CursorSource for FakeScreen {
    fn cursor(&mut self) -> Result<Option<CursorShape>, DesktopError> {
        Ok(None)
    }
}

struct NoInput;

impl Input for NoInput {
    fn key(&mut self, _: u32, _: bool) -> Result<(), DesktopError> {
        Ok(())
    }
    fn pointer_move(&mut self, _: u16, _: u16) -> Result<(), DesktopError> {
        Ok(())
    }
    fn button(&mut self, _: u8, _: bool) -> Result<(), DesktopError> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_size_change_reaches_each_viewer_as_it_understands_it() {
    let state = FakeScreen(Arc::new(Mutex::new((
        Size {
            width: 64,
            height: 32,
        },
        false,
    ))));
    let desktops = Desktops::default();
    let mut viewers = Vec::new();
    for encodings in [
        vec![encoding::RAW, encoding::EXTENDED_DESKTOP_SIZE],
        vec![encoding::RAW, encoding::DESKTOP_SIZE],
        vec![encoding::RAW],
    ] {
        let screen = state.clone();
        let desktop = desktops
            .attach("fake:0", Pacing::with_max_fps(60), move || {
                Ok(Backend {
                    display: "fake:0".into(),
                    screen: Box::new(screen),
                    input: Box::new(NoInput),
                    clipboard: None,
                    method: "fake",
                })
            })
            .await;
        let ((server_r, server_w), end) = channel();
        let options = ViewerOptions {
            name: "fake".into(),
            control: true,
            clipboard_to_device: false,
            clipboard_from_device: false,
            max_fps: 60,
        };
        let served = tokio::spawn(serve(desktop, options, server_r, server_w));
        let mut viewer = Viewer::new(end);
        viewer.handshake(&encodings).await;
        viewer.request(false).await;
        viewer.update().await;
        viewers.push((viewer, served));
    }
    *state.0.lock().unwrap() = (
        Size {
            width: 128,
            height: 64,
        },
        true,
    );
    let whole = Rect::new(0, 0, 128, 64);
    for (i, (viewer, _)) in viewers.iter_mut().enumerate() {
        viewer.request(true).await;
        let got = viewer.update().await;
        match i {
            0 => {
                assert!(
                    got.pseudo
                        .contains(&(encoding::EXTENDED_DESKTOP_SIZE, whole)),
                    "{got:?}"
                );
                assert!(got.covers(whole), "the whole new screen follows: {got:?}");
            }
            1 => {
                assert!(
                    got.pseudo.contains(&(encoding::DESKTOP_SIZE, whole)),
                    "{got:?}"
                );
                assert!(got.covers(whole), "{got:?}");
            }
            _ => {
                assert!(got.pseudo.is_empty(), "{got:?}");
                assert_eq!((viewer.width, viewer.height), (64, 32));
                assert!(
                    got.rects
                        .iter()
                        .all(|r| r.intersect(&Rect::new(0, 0, 64, 32)) == *r),
                    "a viewer that cannot resize keeps its size, clipped: {got:?}"
                );
            }
        }
    }
    for (mut viewer, served) in viewers {
        viewer.to.finish().await.unwrap();
        assert!(viewer.until_closed().await);
        served.await.unwrap().unwrap();
    }
    assert_eq!(desktops.capturing().await, 0);
}
