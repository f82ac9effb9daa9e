//! The browser viewer's local web server: the one-time link, the cookie it is exchanged for,
//! the `Host` and `Origin` checks, the embedded page and noVNC, the state of what it shows
//! (`/state`, from its [`Feed`]: a live session or a recording), playback controls
//! (`/control`) and the WebSocket (`/ws`) that the bridge or the recording's player takes over.
//!
//! Routes (every one checks `Host`; all but `/open` need the cookie):
//!
//! | route | what |
//! |---|---|
//! | `GET /open?token=T` | exchanges the one-time token for the cookie, once, and redirects to `/` |
//! | `GET /` | the viewer page |
//! | `GET /assets/…` | the page's script and style, noVNC and its licence |
//! | `GET /state` | the feed as JSON (a session: device, countdown, end, view-only, clipboard; a recording: position, duration, speed) and the viewers |
//! | `POST /control` | a playback control as JSON (recordings only; same origin only) |
//! | `GET /ws` | the desktop, as RFB in binary WebSocket messages (same origin only) |

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::ws::{WebSocket, WebSocketUpgrade};
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use sha2::{Digest, Sha256};
use tokio::sync::{Notify, mpsc};

include!(concat!(env!("OUT_DIR"), "/assets.rs"));

/// The largest WebSocket message the page may send (a 1 MiB clipboard and its framing).
const MAX_MESSAGE: usize = 2 << 20;
/// The largest playback control the page may post.
const MAX_CONTROL: usize = 1024;

/// What the viewer shows: the page's `/state` and what `/control` does.
pub(crate) trait Feed: Send + Sync + 'static {
    /// The fields of `/state` that describe what is shown (the server adds `nowMs`,
    /// `viewers` and `closed`).
    fn state(&self, shared: &Shared) -> serde_json::Map<String, serde_json::Value>;

    /// Applies a playback control the page posted; the error is shown to the page.
    fn control(&self, _body: &[u8]) -> Result<(), String> {
        Err("this viewer has no playback controls".into())
    }
}

/// What the server's handlers share with the command.
pub(crate) struct Shared {
    /// The command that serves it (`desktop`, `play`), named in refusals.
    pub command: &'static str,
    /// The port the server listens on (127.0.0.1).
    pub port: u16,
    /// SHA-256 of the one-time token; the token itself is kept nowhere.
    pub token_sha256: [u8; 32],
    /// The cookie's secret, once the token was exchanged for it.
    pub cookie: Mutex<Option<String>>,
    /// Upgraded WebSockets, handed to the command, which owns their bridges.
    pub sockets: mpsc::Sender<WebSocket>,
    /// Pages whose desktop is connected now.
    pub viewers: AtomicUsize,
    /// Why the last desktop closed, for the page to show.
    pub closed: Mutex<Option<String>>,
    /// Notified when a page was given the state after the session ended.
    pub ended_shown: Notify,
    /// What is shown.
    pub feed: Arc<dyn Feed>,
}

impl Shared {
    /// Whether the one-time token was exchanged for the cookie.
    pub fn cookie_issued(&self) -> bool {
        lock(&self.cookie).is_some()
    }

    /// The cookie's name: per port, since browsers do not keep cookies apart by port.
    fn cookie_name(&self) -> String {
        format!("tether-desktop-{}", self.port)
    }

    /// Whether the request carries the cookie the one-time token was exchanged for.
    fn authorised(&self, headers: &HeaderMap) -> bool {
        let Some(secret) = lock(&self.cookie).clone() else {
            return false;
        };
        let name = self.cookie_name();
        headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .filter_map(|v| cookie_value(v, &name))
            .any(|v| same(v.as_bytes(), secret.as_bytes()))
    }
}

/// Locks a mutex, through a poisoned one (its data is plain values).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A new one-time token: 256 random bits, hex.
pub(crate) fn one_time_token() -> String {
    hex::encode(rand::random::<[u8; 32]>())
}

/// SHA-256 of `text`.
pub(crate) fn sha256(text: &str) -> [u8; 32] {
    Sha256::digest(text.as_bytes()).into()
}

/// Byte strings compared in time that depends on their length only.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The value of cookie `name` in a `Cookie` header.
fn cookie_value<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    header.split(';').find_map(|pair| {
        let (k, v) = pair.trim().split_once('=')?;
        (k == name).then_some(v)
    })
}

/// The value of `key` in a query string (no percent-decoding: the token is hex).
fn query_value<'a>(query: &'a str, key: &str) -> Option<&'a str> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k == key).then_some(v)
    })
}

/// Whether a `Host` header names this server: `127.0.0.1:PORT` or `localhost:PORT` exactly.
/// Anything else is a name that resolved here by accident or by DNS rebinding.
fn host_ok(host: Option<&str>, port: u16) -> bool {
    host.is_some_and(|h| h == format!("127.0.0.1:{port}") || h == format!("localhost:{port}"))
}

/// Whether an `Origin` header is the page's own: `http://127.0.0.1:PORT` or
/// `http://localhost:PORT`. A missing one is refused too (browsers always send it on a
/// WebSocket).
fn origin_ok(origin: Option<&str>, port: u16) -> bool {
    origin.is_some_and(|o| {
        o == format!("http://127.0.0.1:{port}") || o == format!("http://localhost:{port}")
    })
}

/// The content type of an asset, by its extension.
fn content_type(path: &str) -> &'static str {
    match path.rsplit_once('.').map(|(_, ext)| ext) {
        Some("html") => "text/html; charset=utf-8",
        Some("js") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("json") => "application/json",
        _ => "text/plain; charset=utf-8",
    }
}

/// The Content-Security-Policy of every response: the page's own scripts and styles only,
/// images from itself or drawn by noVNC (`data:` cursors), the WebSocket to this server only,
/// no frames, forms, plugins or base changes.
fn content_security_policy(port: u16) -> String {
    format!(
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; \
         connect-src 'self' ws://127.0.0.1:{port} ws://localhost:{port}; base-uri 'none'; \
         form-action 'none'; frame-ancestors 'none'"
    )
}

/// The server's routes.
pub(crate) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/open", get(open))
        .route("/", get(page))
        .route("/assets/{*path}", get(asset))
        .route("/state", get(state))
        .route(
            "/control",
            post(control).layer(DefaultBodyLimit::max(MAX_CONTROL)),
        )
        .route("/ws", get(ws))
        .fallback(|| async { refuse(StatusCode::NOT_FOUND, "not found") })
        .layer(middleware::from_fn_with_state(shared.clone(), guard))
        .with_state(shared)
}

/// A refusal in plain text.
fn refuse(status: StatusCode, why: &str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        format!("{why}\n"),
    )
        .into_response()
}

/// Every request: `Host` must name this server; every response gets the security headers.
async fn guard(State(shared): State<Arc<Shared>>, request: Request, next: Next) -> Response {
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok());
    let mut response = if host_ok(host, shared.port) {
        next.run(request).await
    } else {
        eprintln!("tether: refused a request for another host name (DNS rebinding?)");
        refuse(
            StatusCode::MISDIRECTED_REQUEST,
            "this server answers to 127.0.0.1 and localhost only",
        )
    };
    let headers = response.headers_mut();
    if let Ok(csp) = HeaderValue::from_str(&content_security_policy(shared.port)) {
        headers.insert(header::CONTENT_SECURITY_POLICY, csp);
    }
    for (name, value) in [
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::CACHE_CONTROL, "no-store"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (
            header::HeaderName::from_static("cross-origin-resource-policy"),
            "same-origin",
        ),
        (
            header::HeaderName::from_static("cross-origin-opener-policy"),
            "same-origin",
        ),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

/// `GET /open?token=T`: the one-time link. The first request with the right token gets the
/// cookie; the token is then spent.
async fn open(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    let token = request
        .uri()
        .query()
        .and_then(|q| query_value(q, "token"))
        .unwrap_or_default();
    if !same(&sha256(token), &shared.token_sha256) {
        eprintln!("tether: refused a browser with a wrong link");
        return refuse(
            StatusCode::FORBIDDEN,
            &format!(
                "wrong link: open the link kubectl tether {} printed",
                shared.command
            ),
        );
    }
    let secret = {
        let mut cookie = lock(&shared.cookie);
        if cookie.is_some() {
            drop(cookie);
            eprintln!("tether: refused a second use of the viewer's link");
            return refuse(
                StatusCode::FORBIDDEN,
                &format!(
                    "this link was already used: each link works once, in one browser; run kubectl tether {} again for a new one",
                    shared.command
                ),
            );
        }
        let secret = hex::encode(rand::random::<[u8; 32]>());
        *cookie = Some(secret.clone());
        secret
    };
    eprintln!("tether: a browser opened the viewer");
    let set_cookie = format!(
        "{}={secret}; Path=/; HttpOnly; SameSite=Strict",
        shared.cookie_name()
    );
    match HeaderValue::from_str(&set_cookie) {
        Ok(value) => (
            StatusCode::SEE_OTHER,
            [
                (header::SET_COOKIE, value),
                (header::LOCATION, HeaderValue::from_static("/")),
            ],
        )
            .into_response(),
        Err(_) => refuse(
            StatusCode::INTERNAL_SERVER_ERROR,
            "failed to set the cookie",
        ),
    }
}

/// What a request without the cookie is told.
fn not_authorised(shared: &Shared) -> Response {
    refuse(
        StatusCode::FORBIDDEN,
        &format!(
            "not authorised: open the link kubectl tether {} printed (each link works once, in one browser)",
            shared.command
        ),
    )
}

/// `GET /`: the viewer page.
async fn page(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    if !shared.authorised(&headers) {
        return not_authorised(&shared);
    }
    served("viewer/index.html")
}

/// `GET /assets/…`.
async fn asset(
    State(shared): State<Arc<Shared>>,
    axum::extract::Path(path): axum::extract::Path<String>,
    headers: HeaderMap,
) -> Response {
    if !shared.authorised(&headers) {
        return not_authorised(&shared);
    }
    served(&path)
}

/// An embedded file, or 404.
fn served(path: &str) -> Response {
    match ASSETS.iter().find(|(p, _)| *p == path) {
        Some((_, bytes)) => {
            ([(header::CONTENT_TYPE, content_type(path))], bytes.to_vec()).into_response()
        }
        None => refuse(StatusCode::NOT_FOUND, "not found"),
    }
}

/// `GET /state`: what the viewer shows, as the page shows it.
async fn state(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    if !shared.authorised(&headers) {
        return not_authorised(&shared);
    }
    let mut body = shared.feed.state(&shared);
    body.insert(
        "nowMs".into(),
        jiff::Timestamp::now().as_millisecond().into(),
    );
    body.insert(
        "viewers".into(),
        shared.viewers.load(Ordering::Relaxed).into(),
    );
    body.insert("closed".into(), lock(&shared.closed).clone().into());
    (
        [(header::CONTENT_TYPE, "application/json")],
        serde_json::Value::Object(body).to_string(),
    )
        .into_response()
}

/// `POST /control`: a playback control. Same origin and the cookie, as for the WebSocket
/// (a cross-site form cannot post JSON with the cookie, and would fail the origin check).
async fn control(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    let origin = headers.get(header::ORIGIN).and_then(|o| o.to_str().ok());
    if !origin_ok(origin, shared.port) {
        eprintln!("tether: refused a playback control from another origin");
        return refuse(StatusCode::FORBIDDEN, "control from another origin");
    }
    if !shared.authorised(&headers) {
        return not_authorised(&shared);
    }
    match shared.feed.control(&body) {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(why) => refuse(StatusCode::BAD_REQUEST, &why),
    }
}

/// `GET /ws`: the desktop. Same origin and the cookie, then the socket goes to the command,
/// which bridges it to a desktop channel or plays the recording into it.
async fn ws(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Response {
    let origin = headers.get(header::ORIGIN).and_then(|o| o.to_str().ok());
    if !origin_ok(origin, shared.port) {
        eprintln!("tether: refused a WebSocket from another origin");
        return refuse(StatusCode::FORBIDDEN, "WebSocket from another origin");
    }
    if !shared.authorised(&headers) {
        return not_authorised(&shared);
    }
    let sockets = shared.sockets.clone();
    upgrade
        .max_message_size(MAX_MESSAGE)
        .max_frame_size(MAX_MESSAGE)
        .on_upgrade(move |socket| async move {
            // The command owns the bridge; this task only hands the socket over.
            let _ = sockets.send(socket).await;
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_this_servers_names_are_accepted_as_host() {
        assert!(host_ok(Some("127.0.0.1:8123"), 8123));
        assert!(host_ok(Some("localhost:8123"), 8123));
        for bad in [
            None,
            Some("127.0.0.1"),
            Some("127.0.0.1:8124"),
            Some("evil.example:8123"),
            Some("127.0.0.1.evil.example:8123"),
            Some("localhost:8123.evil.example"),
            Some("[::1]:8123"),
            Some(""),
        ] {
            assert!(!host_ok(bad, 8123), "{bad:?}");
        }
    }

    #[test]
    fn only_the_pages_own_origin_may_open_the_websocket() {
        assert!(origin_ok(Some("http://127.0.0.1:8123"), 8123));
        assert!(origin_ok(Some("http://localhost:8123"), 8123));
        for bad in [
            None,
            Some("null"),
            Some("http://127.0.0.1:8124"),
            Some("https://127.0.0.1:8123"),
            Some("http://evil.example"),
            Some("http://127.0.0.1:8123.evil.example"),
        ] {
            assert!(!origin_ok(bad, 8123), "{bad:?}");
        }
    }

    #[test]
    fn cookies_and_queries_are_read_by_exact_name() {
        let header = "other=1; tether-desktop-80=abc; tether-desktop-8080=def";
        assert_eq!(cookie_value(header, "tether-desktop-8080"), Some("def"));
        assert_eq!(cookie_value(header, "tether-desktop-80"), Some("abc"));
        assert_eq!(cookie_value(header, "tether-desktop-8"), None);
        assert_eq!(cookie_value("garbage", "x"), None);
        assert_eq!(query_value("a=1&token=ff&b", "token"), Some("ff"));
        assert_eq!(query_value("xtoken=ff", "token"), None);
        assert_eq!(query_value("", "token"), None);
    }

    #[test]
    fn comparisons_need_every_byte() {
        assert!(same(b"abcd", b"abcd"));
        assert!(!same(b"abcd", b"abce"));
        assert!(!same(b"abc", b"abcd"));
        let token = one_time_token();
        assert_eq!(token.len(), 64);
        assert_ne!(token, one_time_token());
        assert!(same(&sha256(&token), &sha256(&token)));
    }

    #[test]
    fn the_page_and_novnc_are_embedded() {
        let paths: Vec<&str> = ASSETS.iter().map(|(p, _)| *p).collect();
        for needed in [
            "viewer/index.html",
            "viewer/viewer.js",
            "viewer/viewer.css",
            "novnc/core/rfb.js",
            "novnc/LICENSE.txt",
            "novnc/docs/LICENSE.MPL-2.0",
        ] {
            assert!(paths.contains(&needed), "{needed} in {paths:?}");
        }
        assert!(!paths.contains(&"README.md"));
        assert_eq!(
            content_type("viewer/viewer.js"),
            "text/javascript; charset=utf-8"
        );
    }

    /// The checked-in noVNC is byte for byte what `MANIFEST.sha256` lists (itself written from
    /// the npm package whose integrity `assets/README.md` records): a file edited, added or
    /// removed by hand fails here.
    #[test]
    fn the_embedded_novnc_matches_its_manifest() {
        let manifest = include_str!("../../assets/novnc/MANIFEST.sha256");
        let mut listed = 0;
        for line in manifest.lines() {
            let (sum, path) = line.split_once("  ").expect("sha256sum format");
            let served = format!("novnc/{path}");
            let (_, bytes) = ASSETS
                .iter()
                .find(|(p, _)| *p == served)
                .unwrap_or_else(|| panic!("{served} is listed but not embedded"));
            assert_eq!(hex::encode(Sha256::digest(bytes)), sum, "{served}");
            listed += 1;
        }
        let embedded = ASSETS
            .iter()
            .filter(|(p, _)| p.starts_with("novnc/"))
            .count();
        assert_eq!(
            embedded, listed,
            "every embedded noVNC file is in the manifest"
        );
        assert!(listed > 50);
    }
}
