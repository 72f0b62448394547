//! Rendering: a pure function of the app state. Every view draws only what fits the screen, so the
//! cost of a frame follows the screen size, not the size of the buffers.

mod chrome;
pub mod compare;
pub mod flow;
mod log;
mod stream;
mod subscriptions;
mod topics;
pub mod topology;

use ratatui::Frame;
use ratatui::layout::{Constraint, Layout};

use super::app::{App, View};

/// Draws the whole screen.
pub fn draw(frame: &mut Frame<'_>, app: &App) {
    // A live demo's controls take two lines of footer, so every key is listed.
    let footer_h = if app.demo.is_some() && app.view == View::Topology { 2 } else { 1 };
    let [header, body, footer] =
        Layout::vertical([Constraint::Length(1), Constraint::Min(3), Constraint::Length(footer_h)])
            .areas(frame.area());
    chrome::header(frame, header, app);
    match app.view {
        View::Topics => topics::draw(frame, body, app),
        View::Stream => stream::draw(frame, body, app),
        View::Subscriptions => subscriptions::draw(frame, body, app),
        View::Topology => topology::draw(frame, body, app),
        View::Log => log::draw(frame, body, app),
    }
    chrome::footer(frame, footer, app);
    if app.composer.is_some() {
        chrome::composer(frame, body, app);
    }
    if app.help {
        chrome::help(frame, body, app);
    }
}

/// `text` cut to `width` characters, an ellipsis marking the cut.
pub(crate) fn fit(text: &str, width: usize) -> String {
    if text.chars().count() > width {
        let cut: String = text.chars().take(width.saturating_sub(1)).collect();
        format!("{cut}…")
    } else {
        text.to_string()
    }
}

/// A rendered buffer as plain text, one line per row with trailing blanks trimmed (for `--snapshot`
/// files and tests).
pub fn buffer_text(buffer: &ratatui::buffer::Buffer) -> String {
    let area = buffer.area;
    let mut out = String::new();
    for y in area.top()..area.bottom() {
        let line: String = (area.left()..area.right())
            .filter_map(|x| buffer.cell((x, y)).map(|c| c.symbol().to_string()))
            .collect();
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}
