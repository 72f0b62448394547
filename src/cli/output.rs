//! The only writer of stdout (and the one place that writes diagnostics to stderr).
//!
//! A closed pipe (`pubsub … | head`) surfaces as [`CliError::BrokenPipe`], which ends the command
//! quietly with success.

use std::io::{self, Write};

use super::CliError;

/// Buffered stdout for one command.
#[derive(Debug)]
pub struct Stdout {
    out: io::BufWriter<io::Stdout>,
}

impl Stdout {
    /// Takes stdout.
    pub fn new() -> Self {
        Stdout { out: io::BufWriter::new(io::stdout()) }
    }

    /// Writes one line and flushes, so that pipes see output as it happens.
    pub fn line(&mut self, text: &str) -> Result<(), CliError> {
        self.out.write_all(text.as_bytes())?;
        if !text.ends_with('\n') {
            self.out.write_all(b"\n")?;
        }
        self.out.flush()?;
        Ok(())
    }
}

impl Default for Stdout {
    fn default() -> Self {
        Stdout::new()
    }
}

/// Writes an error message to stderr, prefixed with the program name.
pub fn error(message: &str) {
    let _ = writeln!(io::stderr(), "pubsub: error: {message}");
}

/// Writes a note to stderr.
pub fn note(message: &str) {
    let _ = writeln!(io::stderr(), "pubsub: {message}");
}
