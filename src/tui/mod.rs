//! The terminal UI: topics, live streams, subscriber lag and ack state.
//!
//! `app` holds the state and its transitions (pure, tested without a terminal), `views` renders it
//! (pure, snapshot-tested), `keymap` is the one registry of keys, and `runtime` owns the terminal, the
//! broker tasks and the event loop.

pub mod action;
pub mod app;
pub mod compare;
pub mod keymap;
pub mod ring;
mod runtime;
pub mod stream;
pub mod theme;
pub mod views;

pub use runtime::{DemoFeed, TuiError, TuiOptions, run, run_compare, run_with_view, snapshot_text};
