//! The only writer of stdout (and the one place that writes diagnostics to stderr).
//!
//! A closed pipe (`pubsub … | head`) surfaces as [`CliError::BrokenPipe`], which ends the command
//! quietly with success.

use std::io::{self, Write};

use super::CliError;

/// Resolves once stdout's reader has gone (a pipe whose reading end closed, a terminal that hung up),
/// so a command that is waiting for messages, with nothing to write, ends as it would at its next write
/// (`pubsub sub T | head -1` then ends when `head` does, not when the next message comes). It never
/// resolves for a file. A detached thread waits in `poll` for the error or hang-up that the kernel
/// reports on the descriptor; it asks for no other event, so it wakes only then.
pub async fn stdout_gone() {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let spawned = std::thread::Builder::new().name("pubsub-stdout-watch".into()).spawn(move || {
        use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
        use std::os::fd::AsFd;
        let out = io::stdout();
        loop {
            let mut fds = [PollFd::new(out.as_fd(), PollFlags::empty())];
            match poll(&mut fds, PollTimeout::NONE) {
                Ok(n) if n > 0 => {
                    let gone = PollFlags::POLLERR | PollFlags::POLLHUP;
                    if fds[0].revents().is_some_and(|r| r.intersects(gone)) {
                        let _ = tx.send(());
                        return;
                    }
                }
                Err(nix::errno::Errno::EINTR) | Ok(_) => {}
                Err(_) => return,
            }
        }
    });
    match spawned {
        Ok(_) if rx.await.is_ok() => {}
        _ => std::future::pending::<()>().await,
    }
}

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

    /// Writes bytes without flushing (callers flush once per batch of messages).
    pub fn write(&mut self, bytes: &[u8]) -> Result<(), CliError> {
        self.out.write_all(bytes)?;
        Ok(())
    }

    /// Flushes what was written.
    pub fn flush(&mut self) -> Result<(), CliError> {
        self.out.flush()?;
        Ok(())
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

/// Lays out rows as left-aligned columns separated by two spaces; the first row is the header.
pub fn table(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| rows.iter().filter_map(|r| r.get(c)).map(|s| s.chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            if c + 1 == row.len() {
                line.push_str(cell);
            } else {
                let pad = widths.get(c).copied().unwrap_or(0).saturating_sub(cell.chars().count());
                line.push_str(cell);
                line.push_str(&" ".repeat(pad + 2));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_columns() {
        let rows = vec![vec!["NAME".into(), "N".into()], vec!["orders".into(), "12".into()]];
        assert_eq!(table(&rows), "NAME    N\norders  12\n");
    }
}
