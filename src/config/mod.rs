//! Where pubsub keeps things: data, runtime files (the daemon's endpoint), logs and configuration.

pub mod file;
pub mod paths;
