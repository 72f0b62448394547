//! The topics view: one row per topic (or a tree by name tokens) with counts, rate and a sparkline.

use ratatui::Frame;
use ratatui::layout::{Constraint, Rect};
use ratatui::widgets::{Cell, Row, Table};

use super::chrome::pane;
use crate::human::{bytes, or_dash};
use crate::human::{retention, sparkline};
use crate::tui::app::{App, TopicRow, TopicSort};

pub(super) fn draw(frame: &mut Frame<'_>, area: Rect, app: &App) {
    let t = &app.theme;
    let topics = app.visible_topics();
    let rows_shown = app.topic_rows();
    let sort = match app.topic_sort {
        TopicSort::Name => "name",
        TopicSort::Rate => "rate",
        TopicSort::Messages => "messages",
        TopicSort::Bytes => "bytes",
    };
    let filter =
        if app.topic_filter.is_empty() { String::new() } else { format!(" filter \"{}\"", app.topic_filter) };
    let title = format!(
        " topics ({}) sorted by {sort}{}{filter} ",
        topics.len(),
        if app.sort_reverse { " ↑" } else { "" }
    );
    let block = pane(app, title, true);
    if topics.is_empty() {
        let msg = if app.topics.is_empty() {
            "no topics yet — publish one with P"
        } else {
            "no topic matches the filter"
        };
        frame.render_widget(ratatui::widgets::Paragraph::new(msg).style(t.fg(t.dim)).block(block), area);
        return;
    }
    let height = usize::from(area.height.saturating_sub(3)).max(1);
    let start = app.topic_selected.saturating_sub(height - 1);
    // Narrow screens drop the sparkline and retention columns rather than squeezing every column;
    // the constraints always fit, so the layout is the same on every run.
    let wide = area.width >= 100;
    // A PARTS column where some topic has more than one (Kafka; an engine topic made with partitions).
    let parts = app.topics.iter().any(|t| t.partitions > 1);
    let rows = rows_shown.iter().enumerate().skip(start).take(height).map(|(i, topic)| {
        let row = row(app, topic, wide, parts);
        if i == app.topic_selected { row.style(t.selected()) } else { row }
    });
    let (mut header, mut widths): (Vec<&str>, Vec<Constraint>) = if wide {
        (
            vec!["TOPIC", "MESSAGES", "RATE/S", "LAST 15 s", "BYTES", "SUBS", "RETENTION"],
            vec![
                Constraint::Fill(2),
                Constraint::Length(9),
                Constraint::Length(8),
                Constraint::Length(15),
                Constraint::Length(10),
                Constraint::Length(5),
                Constraint::Fill(1),
            ],
        )
    } else {
        (
            vec!["TOPIC", "MESSAGES", "RATE/S", "BYTES", "SUBS"],
            vec![
                Constraint::Fill(1),
                Constraint::Length(9),
                Constraint::Length(8),
                Constraint::Length(10),
                Constraint::Length(5),
            ],
        )
    };
    if parts {
        header.insert(1, "PARTS");
        widths.insert(1, Constraint::Length(5));
    }
    let header = Row::new(header).style(t.fg(t.dim));
    frame.render_widget(Table::new(rows, widths).header(header).block(block).style(t.text()), area);
}

fn row<'a>(app: &App, r: &TopicRow<'_>, wide: bool, parts: bool) -> Row<'a> {
    let t = &app.theme;
    // The tree indents by depth and shows only the last level (levels are `.` tokens, or `/` levels on
    // MQTT); a level that is no topic of its own ends in the separator and shows the sums under it.
    let name = match (app.tree, r.topic) {
        (false, _) => r.label.clone(),
        (true, topic) => format!(
            "{}{}{}{}",
            "  ".repeat(r.depth),
            if r.depth > 0 { "└ " } else { "" },
            r.label,
            if topic.is_none() { app.level_separator().to_string() } else { String::new() }
        ),
    };
    let figures = if r.topic.is_some() { t.text() } else { t.fg(t.dim) };
    let mut cells = vec![Cell::from(name).style(if r.topic.is_some() { t.fg(t.topic) } else { t.fg(t.dim) })];
    if parts {
        cells.push(
            Cell::from(r.topic.map(|topic| topic.partitions.to_string()).unwrap_or_default()).style(figures),
        );
    }
    cells.extend([
        Cell::from(r.messages.to_string()).style(figures),
        Cell::from(or_dash(r.rate, |r| format!("{r:.1}"))).style(figures),
    ]);
    if wide {
        let spark = r.topic.map(|topic| sparkline(&topic.publish_series)).unwrap_or_default();
        cells.push(Cell::from(spark).style(t.fg(t.accent)));
    }
    cells.push(Cell::from(or_dash(r.bytes, bytes)).style(figures));
    cells.push(Cell::from(r.subscriptions.to_string()).style(figures));
    if wide {
        let kept =
            r.topic.map(|topic| retention(&topic.limits, topic.discard, topic.retention)).unwrap_or_default();
        cells.push(Cell::from(kept).style(t.fg(t.dim)));
    }
    Row::new(cells)
}
