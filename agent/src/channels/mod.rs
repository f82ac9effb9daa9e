//! The channels an agent serves: shell, files, chat and processes.

pub mod chat;
pub mod confine;
pub mod files;
pub mod processes;
pub mod shell;
