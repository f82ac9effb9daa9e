//! Sessions at the relay: the rules of one session as a state machine without I/O
//! ([`machine`]), and the registry that owns every live session and carries out what its
//! machine decides ([`registry`]).

pub mod machine;
pub(crate) mod recording;
pub mod registry;

pub use machine::{Consent, EndReason};
pub use registry::{SessionHandle, Sessions};
