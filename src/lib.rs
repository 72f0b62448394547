//! `pubsub`: a terminal workbench for publish/subscribe.
//!
//! # Codemap
//! * [`engine`]: the local topic engine — topics as append-only logs, subscriptions with per-message
//!   delivery state (leases, acks, redelivery, dead letters), taps, retention, seek, metrics, events.
//!   Pure state behind per-topic locks; knows nothing of terminals, sockets or the command line.
//! * [`broker`]: the one client-side interface ([`broker::Broker`]) every command and the TUI use, with
//!   one backend per file and [`broker::url`] to pick a backend from a URL.
//! * [`cli`]: the clap definition, one file per subcommand, and `output`, the only writer of stdout.
//!
//! Invariants: the engine never blocks a publisher on a consumer and keeps no unbounded queue; a slow
//! subscription shows up as lag. Every time-dependent rule reads the engine's injectable clock.

pub mod broker;
pub mod cli;
pub mod config;
pub mod demo;
pub mod engine;
pub mod human;
pub mod model;
pub mod protocol;
pub mod server;
pub mod store;
pub mod tui;
