//! One module per subcommand.

pub mod bench;
pub mod config;
pub mod demo;
pub mod join;
pub mod publish;
pub mod record;
pub mod replay;
pub mod reply;
pub mod request;
pub mod serve;
pub mod snapshot;
pub mod store;
pub mod subs;
pub mod subscribe;
pub mod tail;
pub mod topics;
pub mod tui;
