//! The `pubsub` binary: parse the command line, run the command, map errors to exit codes.

use std::process::ExitCode;

fn main() -> ExitCode {
    pubsub::cli::main()
}
