//! The browser viewer's real parts for end-to-end tests: `kubectl tether desktop` as the
//! technician runs it (with the one-time link it printed), headless Chromium (Debian's
//! `/usr/bin/chromium`) driven over the Chrome DevTools Protocol, and raw HTTP requests for
//! what no browser would send (wrong `Host`, foreign `Origin`, no cookie).

use std::io::BufRead;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

use crate::desktop::{KillOnDrop, Rgb, png_to_rgb, spawn_kubectl_tether};
use crate::{PATIENCE, eventually};

/// `kubectl tether desktop NAME --no-browser` (or `play`) running as a technician.
pub struct Viewer {
    child: KillOnDrop,
    lines: mpsc::Receiver<String>,
    /// Everything it printed so far.
    pub printed: Vec<String>,
    /// The one-time link it printed.
    pub url: String,
    /// The local port.
    pub port: u16,
}

impl Viewer {
    /// Starts `kubectl tether desktop NAME --no-browser` as `user` in `ns` and waits for the
    /// link it prints.
    pub async fn start(ns: &str, user: &str, name: &str) -> Self {
        Self::start_with(ns, user, &["desktop", name, "--no-browser"]).await
    }

    /// Starts `kubectl tether ARGS…` (a command that prints a viewer's one-time link, with
    /// `--no-browser`) as `user` in `ns` and waits for the link.
    pub async fn start_with(ns: &str, user: &str, args: &[&str]) -> Self {
        let what = format!(
            "kubectl tether {}",
            args.first().copied().unwrap_or_default()
        );
        let (child, lines) = spawn_kubectl_tether(ns, user, args, &what);
        let mut viewer = Self {
            child,
            lines,
            printed: Vec::new(),
            url: String::new(),
            port: 0,
        };
        let url = eventually(&format!("{what} prints its link"), PATIENCE, || {
            viewer.drain();
            let url = viewer.printed.iter().find_map(|l| {
                l.split_whitespace()
                    .find(|w| w.starts_with("http://127.0.0.1:") && w.contains("token="))
                    .map(str::to_owned)
            });
            if let Some(status) = viewer.child.0.try_wait().ok().flatten() {
                panic!("{what} exited ({status}): {:#?}", viewer.printed);
            }
            async move { url }
        })
        .await;
        viewer.port = url
            .trim_start_matches("http://127.0.0.1:")
            .split('/')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("a port in the link");
        viewer.url = url;
        viewer
    }

    /// Takes in what it printed since the last call.
    pub fn drain(&mut self) {
        while let Ok(line) = self.lines.try_recv() {
            self.printed.push(line);
        }
    }

    /// Waits until it exits; returns everything it printed.
    pub async fn wait_exit(&mut self, patience: Duration) -> Vec<String> {
        eventually("kubectl tether desktop exits", patience, || {
            let status = self.child.0.try_wait().ok().flatten();
            async move { status }
        })
        .await;
        let deadline = Instant::now() + Duration::from_secs(5);
        while let Ok(line) = self
            .lines
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            self.printed.push(line);
        }
        self.printed.clone()
    }
}

/// An HTTP response as the raw helpers read it.
#[derive(Debug)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Header lines, names lowercased.
    pub headers: Vec<(String, String)>,
    /// The body (as text).
    pub body: String,
}

impl Response {
    /// The first header named `name` (lowercase).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Sends `GET path` to 127.0.0.1:`port` with exactly `headers` (give `Host` yourself, or
/// leave it out) and reads the response until the server closes or the head of a switched
/// protocol arrives.
pub async fn raw_get(port: u16, path: &str, headers: &[(&str, &str)]) -> Result<Response> {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    let mut request = format!("GET {path} HTTP/1.1\r\n");
    if !headers
        .iter()
        .any(|(n, _)| n.eq_ignore_ascii_case("connection"))
    {
        request.push_str("Connection: close\r\n");
    }
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut data = Vec::new();
    let mut buf = [0u8; 4096];
    let read = async {
        loop {
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            data.extend_from_slice(&buf[..n]);
            // A WebSocket upgrade keeps the connection open: its head is all there is; a
            // server that keeps the connection open has said how long its body is.
            if let Some(end) = data.windows(4).position(|w| w == b"\r\n\r\n") {
                if data.starts_with(b"HTTP/1.1 101") {
                    break;
                }
                let head = String::from_utf8_lossy(&data[..end]).to_ascii_lowercase();
                let length = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse::<usize>().ok());
                if length.is_some_and(|n| data.len() >= end + 4 + n) {
                    break;
                }
            }
        }
        anyhow::Ok(())
    };
    tokio::time::timeout(PATIENCE, read)
        .await
        .context("the viewer's server did not answer")??;
    let text = String::from_utf8_lossy(&data).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .context("malformed HTTP response")?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Ok(Response {
        status,
        headers,
        body: body.to_owned(),
    })
}

/// Headless Chromium with a profile of its own, killed when dropped.
pub struct Chromium {
    _child: KillOnDrop,
    _profile: tempfile::TempDir,
    port: u16,
}

/// A command on PATH or a clear failure naming the package that provides it.
fn chromium_path() -> PathBuf {
    ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!("Chromium is needed (Debian package chromium; `cargo xtask test` installs it)")
        })
}

impl Chromium {
    /// Starts headless Chromium with a 1280×1024 window and its DevTools endpoint on a port
    /// it picks and reports.
    pub fn launch() -> Self {
        let profile = tempfile::tempdir().expect("a profile directory");
        let mut child = Command::new(chromium_path())
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-extensions",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--hide-scrollbars",
                "--force-device-scale-factor=1",
                "--window-size=1280,1024",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("chromium starts");
        let stderr = child.stderr.take().expect("stderr is piped");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                if let Some(rest) = line.split("DevTools listening on ws://127.0.0.1:").nth(1) {
                    let port = rest.split('/').next().and_then(|p| p.parse::<u16>().ok());
                    let _ = tx.send(port);
                }
            }
        });
        let port = rx
            .recv_timeout(PATIENCE)
            .ok()
            .flatten()
            .expect("chromium reports its DevTools port");
        Self {
            _child: KillOnDrop(child),
            _profile: profile,
            port,
        }
    }

    /// A new tab, driven over its DevTools WebSocket.
    pub async fn page(&self) -> Page {
        let target: Value = {
            let response = raw_get(
                self.port,
                "/json/new?about:blank",
                &[("Host", &format!("127.0.0.1:{}", self.port))],
            )
            .await;
            // Newer Chromium wants PUT for /json/new; fall back to the first page listed.
            match response.ok().filter(|r| r.status == 200) {
                Some(r) => serde_json::from_str(&r.body).expect("a target"),
                None => {
                    let list = raw_get(
                        self.port,
                        "/json/list",
                        &[("Host", &format!("127.0.0.1:{}", self.port))],
                    )
                    .await
                    .expect("chromium lists its targets");
                    let targets: Vec<Value> =
                        serde_json::from_str(&list.body).expect("a target list");
                    targets
                        .into_iter()
                        .find(|t| t["type"] == "page")
                        .expect("a page target")
                }
            }
        };
        let url = target["webSocketDebuggerUrl"]
            .as_str()
            .expect("the target's WebSocket")
            .to_owned();
        let (ws, _) = tokio_tungstenite::connect_async(url.as_str())
            .await
            .expect("the DevTools WebSocket opens");
        Page { ws, next_id: 0 }
    }
}

/// One tab.
pub struct Page {
    ws: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    next_id: u64,
}

impl Page {
    /// Calls a DevTools method and returns its result (events meanwhile are skipped).
    pub async fn call(&mut self, method: &str, params: Value) -> Result<Value> {
        self.next_id += 1;
        let id = self.next_id;
        let request = json!({"id": id, "method": method, "params": params});
        self.ws.send(Message::text(request.to_string())).await?;
        let answer = async {
            while let Some(message) = self.ws.next().await {
                let Message::Text(text) = message? else {
                    continue;
                };
                let value: Value = serde_json::from_str(&text)?;
                if value["id"] == id {
                    if let Some(error) = value.get("error") {
                        bail!("{method} failed: {error}");
                    }
                    return Ok(value["result"].clone());
                }
            }
            bail!("the DevTools WebSocket closed")
        };
        tokio::time::timeout(PATIENCE, answer)
            .await
            .with_context(|| format!("{method} did not answer"))?
    }

    /// Navigates to `url` (the load itself is not waited for).
    pub async fn goto(&mut self, url: &str) {
        self.call("Page.navigate", json!({"url": url}))
            .await
            .expect("Page.navigate");
    }

    /// Evaluates `expression` in the page (awaiting a promise) and returns its value.
    pub async fn eval(&mut self, expression: &str) -> Result<Value> {
        let result = self
            .call(
                "Runtime.evaluate",
                json!({"expression": expression, "returnByValue": true, "awaitPromise": true}),
            )
            .await?;
        if let Some(e) = result.get("exceptionDetails") {
            bail!("{expression} threw: {e}");
        }
        Ok(result["result"]["value"].clone())
    }

    /// Evaluates `expression` until it gives something other than null, false or an empty
    /// string, and returns that; panics with `what` after `timeout`.
    pub async fn wait_for(&mut self, what: &str, expression: &str, timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let value = self.eval(expression).await.unwrap_or(Value::Null);
            if !(value.is_null() || value == false || value == "") {
                return value;
            }
            assert!(
                Instant::now() < deadline,
                "timed out after {timeout:?} waiting until {what}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The text of the element with id `id`, or `None` when there is none or it is hidden.
    pub async fn visible_text(&mut self, id: &str) -> Option<String> {
        let js = format!(
            "(() => {{ const e = document.getElementById({id:?}); \
             return e && !e.hidden && e.offsetParent !== null ? e.textContent : null; }})()"
        );
        self.eval(&js)
            .await
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
    }

    /// A PNG screenshot of the page region the element matched by `selector` covers.
    pub async fn screenshot_of(&mut self, selector: &str) -> Vec<u8> {
        let js = format!(
            "(() => {{ const r = document.querySelector({selector:?}).getBoundingClientRect(); \
             return {{x: r.left, y: r.top, width: r.width, height: r.height}}; }})()"
        );
        let rect = self.eval(&js).await.expect("the element's bounds");
        let shot = self
            .call(
                "Page.captureScreenshot",
                json!({"format": "png", "clip": {
                    "x": rect["x"], "y": rect["y"],
                    "width": rect["width"], "height": rect["height"], "scale": 1
                }}),
            )
            .await
            .expect("a screenshot");
        use base64::Engine;
        base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().expect("base64 data"))
            .expect("valid base64")
    }

    /// Where the element matched by `selector` is, in the page: its top-left corner.
    pub async fn origin_of(&mut self, selector: &str) -> (f64, f64) {
        let js = format!(
            "(() => {{ const r = document.querySelector({selector:?}).getBoundingClientRect(); \
             return [r.left, r.top]; }})()"
        );
        let v = self.eval(&js).await.expect("the element's bounds");
        (v[0].as_f64().expect("left"), v[1].as_f64().expect("top"))
    }

    /// Moves the mouse to (`x`, `y`) in the page and clicks the left button there.
    pub async fn click(&mut self, x: f64, y: f64) {
        for (kind, buttons) in [("mouseMoved", 0), ("mousePressed", 1), ("mouseReleased", 0)] {
            self.call(
                "Input.dispatchMouseEvent",
                json!({"type": kind, "x": x, "y": y, "button": "left",
                       "buttons": buttons, "clickCount": 1}),
            )
            .await
            .expect("a mouse event");
        }
    }

    /// Types `text` key by key as a keyboard would (letters, digits and space; `\n` is
    /// Enter), into whatever has the focus.
    pub async fn type_text(&mut self, text: &str) {
        for c in text.chars() {
            let (key, code, vk, typed) = match c {
                '\n' => ("Enter".to_owned(), "Enter".to_owned(), 13, "\r".to_owned()),
                ' ' => (" ".into(), "Space".into(), 32, " ".into()),
                c if c.is_ascii_lowercase() => (
                    c.to_string(),
                    format!("Key{}", c.to_ascii_uppercase()),
                    c.to_ascii_uppercase() as u32,
                    c.to_string(),
                ),
                c if c.is_ascii_digit() => {
                    (c.to_string(), format!("Digit{c}"), c as u32, c.to_string())
                }
                other => panic!("type_text does not know how to type {other:?}"),
            };
            self.call(
                "Input.dispatchKeyEvent",
                json!({"type": "keyDown", "key": key, "code": code, "text": typed,
                       "windowsVirtualKeyCode": vk, "nativeVirtualKeyCode": vk}),
            )
            .await
            .expect("a key down");
            self.call(
                "Input.dispatchKeyEvent",
                json!({"type": "keyUp", "key": key, "code": code,
                       "windowsVirtualKeyCode": vk, "nativeVirtualKeyCode": vk}),
            )
            .await
            .expect("a key up");
        }
    }
}

/// Records every byte the page sends on WebSockets, in the page (installed by the test's
/// browser before the page's own scripts run; DevTools scripts are not subject to the page's
/// Content-Security-Policy). What noVNC sent is then read exactly, not inferred from timing.
pub const RECORD_SENDS: &str = r"
window.__tetherSent = [];
const send = WebSocket.prototype.send;
WebSocket.prototype.send = function (data) {
  let bytes = null;
  if (data instanceof ArrayBuffer) bytes = new Uint8Array(data);
  else if (ArrayBuffer.isView(data)) bytes = new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  if (bytes) for (const b of bytes) window.__tetherSent.push(b);
  return send.call(this, data);
};
";

/// Chromium with the viewer loaded from its one-time link and the desktop connected.
pub async fn open_viewer(viewer: &Viewer) -> (Chromium, Page) {
    let chromium = Chromium::launch();
    let mut page = chromium.page().await;
    page.call("Page.enable", serde_json::json!({}))
        .await
        .expect("Page.enable");
    page.call(
        "Page.addScriptToEvaluateOnNewDocument",
        serde_json::json!({"source": RECORD_SENDS}),
    )
    .await
    .expect("the recorder is installed");
    page.goto(&viewer.url).await;
    page.wait_for(
        "the viewer's desktop is connected",
        "document.body && document.body.dataset.state === 'connected'",
        PATIENCE,
    )
    .await;
    (chromium, page)
}

/// Switches the viewer from "fit to window" to the screen's actual size (`width`×`height`),
/// through its button.
pub async fn actual_size(page: &mut Page, width: u32, height: u32) {
    page.eval("document.getElementById('scale').click()")
        .await
        .expect("the scale button");
    let check = format!(
        "(() => {{ const c = document.querySelector('#screen canvas'); \
         const r = c && c.getBoundingClientRect(); \
         return r && Math.round(r.width) === {width} && Math.round(r.height) === {height}; }})()"
    );
    page.wait_for("the screen is shown at its actual size", &check, PATIENCE)
        .await;
}

/// The viewer's canvas as the browser paints it, from a screenshot of the page.
pub async fn canvas_shot(page: &mut Page, dir: &std::path::Path, name: &str) -> Rgb {
    let png = page.screenshot_of("#screen canvas").await;
    let path = dir.join(name);
    std::fs::write(&path, png).expect("the screenshot is saved");
    png_to_rgb(&path)
}

/// Takes screenshots of the viewer's canvas until `check` accepts one.
pub async fn wait_screen<T>(
    page: &mut Page,
    dir: &std::path::Path,
    check: impl Fn(&Rgb) -> Option<T>,
) -> T {
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        let seen = canvas_shot(page, dir, "screen.png").await;
        if let Some(value) = check(&seen) {
            return value;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting until the page shows the device's screen ({seen:?})"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
