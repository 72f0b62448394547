//! The subscriptions view: per subscription a lag gauge with its trend, pending, in-flight with the
//! oldest age against the ack deadline, redelivered, dead-lettered, rates and consumers; below it, the
//! selected subscription's consumers with their share, or its per-message ack state.

use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::Color;
use ratatui::text::{Line, Span};
use ratatui::widgets::{Cell, Paragraph, Row, Table};

use super::chrome::{pane, unavailable};
use crate::broker::Capability;
use crate::human::{duration, or_dash};
use crate::model::{DeliveryState, SubscriptionInfo};
use crate::tui::app::App;

pub(super) fn draw(frame: &mut Frame<'_>, area: Rect, app: &App) {
    if !app.caps.has(Capability::Lag) {
        unavailable(frame, area, app, "subscriptions, lag and ack state");
        return;
    }
    let split = if app.selected_sub().is_some_and(|s| s.partitions.len() > 1) && !app.show_ack_state {
        // The partitions need the room: the table takes what its rows need, up to the usual 55 %.
        let need = app.visible_subs().len().saturating_add(3).max(5);
        let most = usize::from(area.height) * 55 / 100;
        Constraint::Length(u16::try_from(need.min(most)).unwrap_or(u16::MAX))
    } else {
        Constraint::Percentage(55)
    };
    let [top, mut bottom] = Layout::vertical([split, Constraint::Fill(1)]).areas(area);
    table(frame, top, app);
    if let Some(p) = app.selected_sub().and_then(|s| s.push.as_ref()) {
        // A push subscription: where it POSTs and how that goes, above the rest.
        let [head, rest] = Layout::vertical([Constraint::Length(5), Constraint::Fill(1)]).areas(bottom);
        push(frame, head, app, p);
        bottom = rest;
    }
    if app.show_ack_state {
        ack_state(frame, bottom, app);
    } else if app.selected_sub().is_some_and(|s| s.partitions.len() > 1) {
        // A subscription over partitions (a Kafka group, a PartitionExclusive one of the engine): who
        // holds which partition, and each one's lag.
        let [left, right] = if bottom.width >= 100 {
            Layout::horizontal([Constraint::Percentage(50), Constraint::Percentage(50)]).areas(bottom)
        } else {
            // Stacked: the consumers take the rows they need (up to half), the partitions the rest.
            let wanted = app.selected_sub().map_or(0, |s| s.consumers.len()).saturating_add(3);
            let most = usize::from(bottom.height / 2);
            let rows = u16::try_from(wanted.min(most)).unwrap_or(u16::MAX);
            Layout::vertical([Constraint::Length(rows), Constraint::Fill(1)]).areas(bottom)
        };
        consumers(frame, left, app);
        partitions(frame, right, app);
    } else {
        consumers(frame, bottom, app);
    }
}

/// A push subscription's endpoint and what its pusher did.
fn push(frame: &mut Frame<'_>, area: Rect, app: &App, p: &crate::model::PushInfo) {
    let t = &app.theme;
    let style = if p.consecutive_failures > 0 { t.fg(t.warn) } else { t.text() };
    let text = vec![
        Line::from(vec![Span::styled("POST ", t.fg(t.dim)), Span::raw(p.endpoint.clone())]),
        Line::styled(crate::human::push_figures(p), style),
    ];
    frame.render_widget(
        Paragraph::new(text).wrap(ratatui::widgets::Wrap { trim: true }).block(pane(
            app,
            " HTTP push ".into(),
            false,
        )),
        area,
    );
}

/// The selected subscription's partitions: owner, ack floor, head and a lag bar scaled to the largest.
fn partitions(frame: &mut Frame<'_>, area: Rect, app: &App) {
    let t = &app.theme;
    let Some(s) = app.selected_sub() else { return };
    let block = pane(app, format!(" {} — partitions ({}) ", s.name, s.partitions.len()), false);
    let most = s.partitions.iter().map(|p| p.lag).max().unwrap_or(0).max(1);
    let height = usize::from(area.height.saturating_sub(3));
    let rows = s.partitions.iter().take(height).map(|p| {
        let color = if p.lag == 0 { t.ok } else { t.warn };
        Row::new([
            Cell::from(p.partition.to_string()),
            Cell::from(p.owner.clone().unwrap_or_else(|| "—".into())),
            Cell::from(p.ack_floor.to_string()),
            Cell::from(p.head_seq.to_string()),
            Cell::from(Line::from(vec![
                Span::styled(gauge(p.lag as f64 / most as f64, 8), t.fg(color)),
                Span::raw(format!(" {}", p.lag)),
            ])),
        ])
    });
    let header = Row::new(["PART", "OWNER", "FLOOR", "HEAD", "LAG"]).style(t.fg(t.dim));
    let widths = [
        Constraint::Length(5),
        Constraint::Fill(1),
        Constraint::Length(8),
        Constraint::Length(8),
        Constraint::Length(16),
    ];
    frame.render_widget(Table::new(rows, widths).header(header).block(block).style(t.text()), area);
}

/// How many columns the subscriptions table has room for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tier {
    Wide,
    Medium,
    Narrow,
}

/// A bar of `width` cells filled in proportion to `ratio`.
pub fn gauge(ratio: f64, width: usize) -> String {
    let filled = ((ratio.clamp(0.0, 1.0) * width as f64).round() as usize).min(width);
    format!("{}{}", "█".repeat(filled), "░".repeat(width - filled))
}

fn lag_color(app: &App, s: &SubscriptionInfo) -> Color {
    let t = &app.theme;
    match app.trend(s) {
        "growing" | "stalled" => t.error,
        _ if s.backlog == 0 => t.ok,
        _ => t.warn,
    }
}

fn table(frame: &mut Frame<'_>, area: Rect, app: &App) {
    let t = &app.theme;
    let subs = app.visible_subs();
    let filter =
        if app.sub_filter.is_empty() { String::new() } else { format!(" filter \"{}\"", app.sub_filter) };
    let block = pane(app, format!(" subscriptions ({}){filter} ", subs.len()), true);
    if subs.is_empty() {
        let msg = "no subscriptions — `pubsub sub TOPIC -s NAME` or `pubsub subs create` makes one";
        frame.render_widget(Paragraph::new(msg).style(t.fg(t.dim)).block(block), area);
        return;
    }
    let height = usize::from(area.height.saturating_sub(3)).max(1);
    let start = app.sub_selected.saturating_sub(height - 1);
    // Three widths: every column from 110, the essentials from 80, and below that NAME, TOPIC and the
    // counts that say whether it keeps up (a narrower gauge). NAME and TOPIC always keep room: the fixed
    // columns of each tier leave at least 20 cells for them at the tier's smallest width, so layouts are
    // stable.
    let tier = if area.width >= 110 {
        Tier::Wide
    } else if area.width >= 80 {
        Tier::Medium
    } else {
        Tier::Narrow
    };
    let gauge_width = if tier == Tier::Narrow { 4 } else { 8 };
    let rows = subs.iter().enumerate().skip(start).take(height).map(|(i, s)| {
        let retained = (s.head_seq + 1).saturating_sub(s.first_seq).max(1);
        let ratio = s.backlog as f64 / retained as f64;
        let oldest = if s.in_flight > 0 || s.backlog > 0 {
            format!("{} / {}", or_dash(s.oldest_unacked_age, duration), duration(s.ack_deadline))
        } else {
            "-".into()
        };
        let mut cells = vec![
            Cell::from(s.name.to_string()).style(t.fg(t.topic)),
            Cell::from(s.topic.to_string()),
            Cell::from(Line::from(vec![
                Span::styled(gauge(ratio, gauge_width), t.fg(lag_color(app, s))),
                Span::raw(format!(" {}", s.backlog)),
            ])),
        ];
        if tier != Tier::Narrow {
            cells.push(Cell::from(app.trend(s)).style(t.fg(lag_color(app, s))));
            cells.push(Cell::from(s.pending.to_string()));
        }
        cells.push(Cell::from(s.in_flight.to_string()).style(t.fg(t.inflight)));
        if tier == Tier::Wide {
            cells.push(Cell::from(oldest));
        }
        cells.push(Cell::from(s.redelivered.to_string()).style(t.fg(t.redelivered)));
        cells.push(Cell::from(s.counters.dead_lettered.to_string()).style(t.fg(t.dlq)));
        if tier == Tier::Wide {
            cells.push(Cell::from(format!(
                "{}/{}",
                or_dash(s.publish_rate, |r| format!("{r:.0}")),
                or_dash(s.ack_rate, |r| format!("{r:.0}"))
            )));
            cells.push(Cell::from(s.consumers.len().to_string()));
        }
        let row = Row::new(cells);
        if i == app.sub_selected { row.style(t.selected()) } else { row }
    });
    let (header, widths): (Vec<&str>, Vec<Constraint>) = match tier {
        Tier::Wide => (
            vec![
                "NAME",
                "TOPIC",
                "BACKLOG",
                "TREND",
                "PENDING",
                "IN-FLIGHT",
                "OLDEST/DEADLINE",
                "REDELIV",
                "DLQ",
                "PUB/ACK/s",
                "CONS",
            ],
            vec![
                Constraint::Fill(2),
                Constraint::Fill(1),
                Constraint::Length(16),
                Constraint::Length(8),
                Constraint::Length(7),
                Constraint::Length(9),
                Constraint::Length(15),
                Constraint::Length(7),
                Constraint::Length(5),
                Constraint::Length(9),
                Constraint::Length(4),
            ],
        ),
        Tier::Medium => (
            vec!["NAME", "TOPIC", "BACKLOG", "TREND", "PENDING", "IN-FLIGHT", "REDELIV", "DLQ"],
            vec![
                Constraint::Fill(1),
                Constraint::Fill(1),
                Constraint::Length(16),
                Constraint::Length(8),
                Constraint::Length(7),
                Constraint::Length(9),
                Constraint::Length(7),
                Constraint::Length(5),
            ],
        ),
        Tier::Narrow => (
            vec!["NAME", "TOPIC", "BACKLOG", "IN-FLIGHT", "REDELIV", "DLQ"],
            vec![
                Constraint::Fill(1),
                Constraint::Fill(1),
                Constraint::Length(10),
                Constraint::Length(9),
                Constraint::Length(7),
                Constraint::Length(5),
            ],
        ),
    };
    let header = Row::new(header).style(t.fg(t.dim));
    frame.render_widget(Table::new(rows, widths).header(header).block(block).style(t.text()), area);
}

fn consumers(frame: &mut Frame<'_>, area: Rect, app: &App) {
    let t = &app.theme;
    let Some(s) = app.selected_sub() else {
        frame.render_widget(pane(app, " consumers ".into(), false), area);
        return;
    };
    // A subscription that assigns its consumers says how; a consumer handed nothing is marked standby.
    let assignment = match s.assignment {
        crate::model::Assignment::Shared => String::new(),
        a => format!(", {}", a.label()),
    };
    let block =
        pane(app, format!(" {} — consumers{assignment} (Enter/a: ack state, x: seek) ", s.name), false);
    if s.consumers.is_empty() {
        let blocked = s.blocked_by.map(|b| format!(" — blocked by {}", b.label())).unwrap_or_default();
        frame.render_widget(
            Paragraph::new(format!("no consumers attached{blocked}")).style(t.fg(t.dim)).block(block),
            area,
        );
        return;
    }
    let total: u64 = s.consumers.iter().map(|c| c.delivered).sum::<u64>().max(1);
    // Below 80 columns MODE and IDLE give way and the share gauge narrows, so CONSUMER keeps room.
    let narrow = area.width < 80;
    let rows = s.consumers.iter().map(|c| {
        let share = c.delivered as f64 / total as f64;
        let mut cells = vec![if c.standby {
            Cell::from(c.id.to_string()).style(t.fg(t.dim))
        } else {
            Cell::from(c.id.to_string())
        }];
        if !narrow {
            cells.push(match (c.standby, c.push) {
                (true, _) => Cell::from("standby").style(t.fg(t.dim)),
                (false, true) => Cell::from("push"),
                (false, false) => Cell::from("pull"),
            });
        }
        cells.push(Cell::from(format!("{}/{}", c.in_flight, c.prefetch)).style(t.fg(t.inflight)));
        if narrow && c.standby {
            // No MODE column to say it: the share gauge of a consumer handed nothing gives way.
            cells.push(Cell::from("standby").style(t.fg(t.dim)));
        } else {
            cells.push(Cell::from(Line::from(vec![
                Span::styled(gauge(share, if narrow { 4 } else { 10 }), t.fg(t.accent)),
                Span::raw(format!(" {:.0}%", share * 100.0)),
            ])));
        }
        cells.push(Cell::from(c.delivered.to_string()));
        cells.push(Cell::from(c.acked.to_string()).style(t.fg(t.acked)));
        if !narrow {
            cells.push(Cell::from(duration(c.idle)));
        }
        Row::new(cells)
    });
    let (header, widths) = if narrow {
        (
            vec!["CONSUMER", "IN-FLIGHT", "SHARE", "DELIVERED", "ACKED"],
            vec![
                Constraint::Fill(1),
                Constraint::Length(10),
                Constraint::Length(10),
                Constraint::Length(10),
                Constraint::Length(8),
            ],
        )
    } else {
        (
            vec!["CONSUMER", "MODE", "IN-FLIGHT", "SHARE", "DELIVERED", "ACKED", "IDLE"],
            vec![
                Constraint::Fill(1),
                Constraint::Length(if s.consumers.iter().any(|c| c.standby) { 8 } else { 5 }),
                Constraint::Length(10),
                Constraint::Length(16),
                Constraint::Length(10),
                Constraint::Length(8),
                Constraint::Length(8),
            ],
        )
    };
    let header = Row::new(header).style(t.fg(t.dim));
    frame.render_widget(Table::new(rows, widths).header(header).block(block).style(t.text()), area);
}

fn ack_state(frame: &mut Frame<'_>, area: Rect, app: &App) {
    let t = &app.theme;
    if !app.caps.has(Capability::Peek) {
        unavailable(frame, area, app, "per-message ack state");
        return;
    }
    let Some(report) = &app.peek else {
        frame.render_widget(
            Paragraph::new("loading…").style(t.fg(t.dim)).block(pane(app, " ack state ".into(), false)),
            area,
        );
        return;
    };
    let title = format!(
        " {} — ack floor {}, delivered {}, head {} ",
        report.subscription, report.ack_floor, report.delivered_seq, report.head_seq
    );
    let height = usize::from(area.height.saturating_sub(3));
    let rows = report.messages.iter().take(height).map(|m| {
        let (label, color) = match (m.state, m.attempt) {
            (DeliveryState::Available, 0) => ("pending", t.dim),
            (DeliveryState::Available, _) => ("redeliverable", t.redelivered),
            (DeliveryState::InFlight, _) => ("in flight", t.inflight),
            (DeliveryState::Delayed, _) => ("backing off", t.redelivered),
            (DeliveryState::Acked, _) => ("acked", t.acked),
            (DeliveryState::Filtered, _) => ("filtered", t.dim),
            (DeliveryState::DeadLettered, _) => ("dead-lettered", t.dlq),
            (DeliveryState::Terminated, _) => ("terminated", t.dlq),
            (DeliveryState::Expired, _) => ("expired", t.dlq),
        };
        let due = m
            .deadline
            .map(|d| format!("lease ends in {}", duration(d.since(app.now))))
            .or_else(|| m.not_before.map(|n| format!("retry in {}", duration(n.since(app.now)))))
            .unwrap_or_default();
        Row::new([
            Cell::from(m.seq.to_string()),
            Cell::from(label).style(t.fg(color)),
            Cell::from(crate::human::attempts(m.state, m.attempt)),
            Cell::from(m.consumer.as_deref().unwrap_or("").to_string()),
            Cell::from(due),
        ])
    });
    let header = Row::new(["SEQ", "STATE", "ATTEMPT", "CONSUMER", "DUE"]).style(t.fg(t.dim));
    let widths = [
        Constraint::Length(8),
        Constraint::Length(14),
        Constraint::Length(8),
        Constraint::Fill(1),
        Constraint::Fill(2),
    ];
    frame.render_widget(
        Table::new(rows, widths).header(header).block(pane(app, title, false)).style(t.text()),
        area,
    );
}

#[cfg(test)]
mod tests {
    use super::gauge;

    #[test]
    fn gauge_fills_in_proportion() {
        assert_eq!(gauge(0.5, 4), "██░░");
        assert_eq!(gauge(2.0, 3), "███");
        assert_eq!(gauge(0.0, 2), "░░");
    }
}
