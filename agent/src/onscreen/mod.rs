//! What the agent shows on the user's own X display: the consent dialog ([`dialog`]) and,
//! while anyone views the screen, the viewing notice ([`notice`]). Both are windows of the
//! agent's own, drawn with core X11 requests and core fonts ([`window`]), so nothing has to
//! be installed on the device; every string in them comes from elsewhere and is cleaned and
//! bounded first ([`text`]), and where it goes is worked out without X ([`layout`]).

pub mod dialog;
pub mod layout;
pub mod notice;
pub mod text;
pub mod window;

pub use self::notice::{Notices, Viewer};

#[cfg(test)]
mod tests;
