//! The one integration test binary: engine acceptance scenarios, property tests, the broker
//! abstraction over the in-process backend, and the command line.

#![expect(
    clippy::unwrap_used,
    clippy::panic,
    clippy::print_stderr,
    reason = "helpers outside #[test] fns fail the test loudly on an unexpected error"
)]

mod amqp_live;
mod assignment;
mod broker_local;
mod cli;
mod commands;
mod compare;
mod compare_tui;
mod conformance;
mod daemon;
mod damage;
mod demo;
mod engine;
mod hostile;
mod http;
mod interop;
mod kafka_live;
mod layering;
mod mqtt_live;
mod nats_live;
mod partitions;
mod postgres_live;
mod properties;
mod push;
mod readme;
mod redis_live;
mod regressions;
mod retention;
mod scenarios;
mod server;
mod share;
mod store;
mod support;
mod tui;
mod tui_e2e;
