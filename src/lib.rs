//! `pubsub`: a terminal workbench for publish/subscribe.
//!
//! # Codemap
//! * [`model`]: the vocabulary every layer speaks (names, clock, pacing, messages, configs, positions,
//!   info, deliveries); imports nothing else of the crate.
//! * [`human`]: figures written for people (sizes, durations, retention, sparklines).
//! * [`store`]: the durable store under a data directory (segments, journals, metadata, repair).
//! * [`engine`]: the local topic engine — topics as append-only logs, subscriptions with per-message
//!   delivery state (leases, acks, redelivery, dead letters), taps, retention, seek, metrics, events.
//!   Pure state behind per-topic locks; knows nothing of terminals, sockets or the command line.
//! * [`protocol`]: the wire protocol's types and codecs (no I/O).
//! * [`broker`]: the one client-side interface ([`broker::Broker`]) every command and the TUI use, one
//!   backend per file or folder, the backend toolkit ([`broker::kit`]) and [`broker::url`].
//! * [`server`]: `pubsub serve`, the engine over WebSocket.
//! * [`config`]: the config file and the directories.
//! * [`tui`], [`demo`]: the terminal UI and the workshop demos.
//! * [`cli`]: the clap definition, one file per subcommand, and `output`, the only writer of stdout.
//!
//! Imports run one way, from the front ends down to `model` (ARCHITECTURE.md "Layers").
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
