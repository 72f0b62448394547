//! The events view: engine events (`$sys.…`) and connection changes, newest at the bottom.

use ratatui::Frame;
use ratatui::layout::Rect;
use ratatui::text::{Line, Span};
use ratatui::widgets::Paragraph;

use super::chrome::pane;
use crate::protocol::envelope::format_time;
use crate::tui::app::App;

pub(super) fn draw(frame: &mut Frame<'_>, area: Rect, app: &App) {
    let t = &app.theme;
    let block = pane(app, format!(" engine events ({}) ", app.log.len()), true);
    let height = usize::from(area.height.saturating_sub(2));
    let end = app.log.len().saturating_sub(app.log_selected);
    let start = end.saturating_sub(height);
    let lines: Vec<Line<'_>> = app
        .log
        .range(start..end)
        .map(|(time, text)| {
            let stamp = format_time(*time);
            Line::from(vec![
                Span::styled(stamp.get(11..19).unwrap_or("").to_string(), t.fg(t.dim)),
                Span::raw(format!(" {text}")),
            ])
        })
        .collect();
    if lines.is_empty() {
        frame.render_widget(Paragraph::new("no events yet").style(t.fg(t.dim)).block(block), area);
    } else {
        frame.render_widget(Paragraph::new(lines).block(block).style(t.text()), area);
    }
}
