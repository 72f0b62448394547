//! The TUI's state and its transitions: `App::update` turns actions and data into new state plus
//! effects for the runtime to carry out. No terminal or socket here; rendering reads this state.

use std::collections::{BTreeMap, VecDeque};

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};

use super::action::Action;
use super::keymap;
use super::stream::{PayloadView, StreamFilter, StreamState};
use super::theme::Theme;
use crate::broker::{Capabilities, Capability};
use crate::model::Position;
use crate::model::{
    Headers, Message, Name, PeekReport, PublishRequest, SeekTarget, SubscriptionInfo, Timestamp, TopicInfo,
};

/// The main views.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum View {
    /// Topics with rates and sizes.
    Topics,
    /// Live messages.
    Stream,
    /// Subscriptions with lag and ack state.
    Subscriptions,
    /// Publishers → topics → subscriptions → consumers.
    Topology,
    /// Engine events and connection state.
    Log,
}

const VIEWS: [View; 5] = [View::Topics, View::Stream, View::Subscriptions, View::Topology, View::Log];

impl View {
    /// The tab title.
    pub fn title(self) -> &'static str {
        match self {
            View::Topics => "1 Topics",
            View::Stream => "2 Stream",
            View::Subscriptions => "3 Subscriptions",
            View::Topology => "4 Topology",
            View::Log => "5 Events",
        }
    }
}

/// How the topics list is ordered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TopicSort {
    /// By name.
    #[default]
    Name,
    /// By publish rate.
    Rate,
    /// By message count.
    Messages,
    /// By bytes.
    Bytes,
}

/// What the runtime must do for the app.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Publish a message.
    Publish(PublishRequest),
    /// Move a subscription.
    Seek(Name, SeekTarget),
    /// Put text on the clipboard.
    Copy(String),
    /// Write the stream buffer to a file.
    Export(String),
    /// Load and apply a theme.
    Theme(String),
    /// Mouse capture on or off.
    Mouse(bool),
    /// A control for the live demo.
    Demo(crate::demo::live::Control),
}

/// A line of text being typed and what it is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Prompt {
    /// Filter the current list.
    Filter,
    /// The stream's field filter.
    StreamFilter,
    /// A `:` command.
    Palette,
    /// Where to seek a subscription.
    Seek(Name),
}

/// The publish composer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Composer {
    /// Subject.
    pub topic: String,
    /// Key (empty: none).
    pub key: String,
    /// Headers as `k=v, k2=v2`.
    pub headers: String,
    /// Body; may span lines.
    pub payload: String,
    /// Which field has the cursor: 0 topic, 1 key, 2 headers, 3 payload.
    pub field: usize,
    /// Why the last attempt was refused.
    pub error: Option<String>,
}

impl Composer {
    fn field_mut(&mut self) -> &mut String {
        match self.field {
            0 => &mut self.topic,
            1 => &mut self.key,
            2 => &mut self.headers,
            _ => &mut self.payload,
        }
    }

    /// The request this composer describes.
    pub fn request(&self) -> Result<PublishRequest, String> {
        let subject = Name::new(self.topic.trim()).map_err(|e| e.to_string())?;
        let mut headers = Headers::new();
        for pair in self.headers.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').ok_or_else(|| format!("header \"{pair}\": use NAME=VALUE"))?;
            headers.insert(k.trim().to_string(), v.trim().to_string());
        }
        let mut req = PublishRequest::new(subject, self.payload.clone());
        req.headers = headers;
        if !self.key.is_empty() {
            req.key = Some(bytes::Bytes::from(self.key.clone()));
        }
        Ok(req)
    }
}

/// One row of the topics view: a topic, or in the tree a level that only groups the topics below it.
#[derive(Debug, Clone, PartialEq)]
pub struct TopicRow<'a> {
    /// The name up to this level (`home.kitchen`); a topic's row has the topic's name.
    pub path: String,
    /// What the row shows: the last level in the tree, the whole name in the list.
    pub label: String,
    /// Levels above it (always 0 in the list).
    pub depth: usize,
    /// The topic; `None` for a level that is no topic of its own.
    pub topic: Option<&'a TopicInfo>,
    /// Messages: the topic's own, or for a parent level the sum of the topics under it.
    pub messages: u64,
    /// Bytes, when every topic counted says.
    pub bytes: Option<u64>,
    /// Publish rate, when a topic counted measures it.
    pub rate: Option<f64>,
    /// Subscriptions.
    pub subscriptions: u32,
}

impl<'a> TopicRow<'a> {
    fn of(topic: &'a TopicInfo, path: String, label: String, depth: usize) -> Self {
        TopicRow {
            path,
            label,
            depth,
            topic: Some(topic),
            messages: topic.messages,
            bytes: topic.bytes,
            rate: topic.publish_rate,
            subscriptions: topic.subscriptions,
        }
    }
}

/// Messages, bytes, publish rate and subscriptions of a level of the tree and everything under it.
type Totals = (u64, Option<u64>, Option<f64>, u32);

/// A level of the topic tree: the topic of that exact name, if any, and the levels below it.
#[derive(Default)]
struct TreeNode<'a> {
    topic: Option<&'a TopicInfo>,
    children: BTreeMap<String, TreeNode<'a>>,
}

impl<'a> TreeNode<'a> {
    /// Messages, bytes, rate and subscriptions of this level and everything under it.
    fn totals(&self) -> Totals {
        let own = self
            .topic
            .map_or((0, Some(0), None, 0), |t| (t.messages, t.bytes, t.publish_rate, t.subscriptions));
        self.children.values().map(TreeNode::totals).fold(own, |a, b| {
            let rate = match (a.2, b.2) {
                (None, None) => None,
                (x, y) => Some(x.unwrap_or(0.0) + y.unwrap_or(0.0)),
            };
            (a.0 + b.0, a.1.zip(b.1).map(|(x, y)| x + y), rate, a.3.saturating_add(b.3))
        })
    }

    /// Depth first, parents before children; siblings in the order of `sort`.
    fn flatten(
        &self,
        path: &str,
        depth: usize,
        sep: char,
        sort: TopicSort,
        reverse: bool,
        out: &mut Vec<TopicRow<'a>>,
    ) {
        let mut children: Vec<(&String, &TreeNode<'a>, Totals)> =
            self.children.iter().map(|(label, node)| (label, node, node.totals())).collect();
        match sort {
            TopicSort::Name => {}
            TopicSort::Rate => children.sort_by(|a, b| b.2.2.unwrap_or(0.0).total_cmp(&a.2.2.unwrap_or(0.0))),
            TopicSort::Messages => children.sort_by_key(|c| std::cmp::Reverse(c.2.0)),
            TopicSort::Bytes => children.sort_by_key(|c| std::cmp::Reverse(c.2.1)),
        }
        if reverse {
            children.reverse();
        }
        for (label, node, (messages, bytes, rate, subscriptions)) in children {
            let full = if path.is_empty() { label.clone() } else { format!("{path}{sep}{label}") };
            // A topic shows its own figures; a level that is only a parent, the sums under it.
            out.push(match node.topic {
                Some(t) => TopicRow::of(t, full.clone(), label.clone(), depth),
                None => TopicRow {
                    path: full.clone(),
                    label: label.clone(),
                    depth,
                    topic: None,
                    messages,
                    bytes,
                    rate,
                    subscriptions,
                },
            });
            node.flatten(&full, depth + 1, sep, sort, reverse, out);
        }
    }
}

/// Link state shown in the header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Link {
    /// Connected.
    Up,
    /// Lost; the client is reconnecting.
    Down(String),
}

/// Backlog samples kept per subscription for the trend arrow.
const TREND_SAMPLES: usize = 10;

/// Everything the TUI shows.
#[derive(Debug, Clone)]
pub struct App {
    /// Current view.
    pub view: View,
    /// Key help open.
    pub help: bool,
    /// A prompt being typed, with its text.
    pub prompt: Option<(Prompt, String)>,
    /// The composer, when open.
    pub composer: Option<Composer>,
    /// Broker URL for the header.
    pub broker: String,
    /// What the broker can do.
    pub caps: Capabilities,
    /// Link state.
    pub link: Link,
    /// Topics as last polled.
    pub topics: Vec<TopicInfo>,
    /// Topic list text filter.
    pub topic_filter: String,
    /// Topic sort.
    pub topic_sort: TopicSort,
    /// Reverse the sort.
    pub sort_reverse: bool,
    /// Tree by name tokens instead of a flat list.
    pub tree: bool,
    /// Selected topic row.
    pub topic_selected: usize,
    /// Subscriptions as last polled.
    pub subs: Vec<SubscriptionInfo>,
    /// Subscription list text filter.
    pub sub_filter: String,
    /// Selected subscription row.
    pub sub_selected: usize,
    /// Recent backlog samples per subscription (oldest first).
    pub backlog_history: BTreeMap<Name, VecDeque<u64>>,
    /// Show the per-message ack state of the selected subscription.
    pub show_ack_state: bool,
    /// Per-message ack state of the selected subscription, as last polled.
    pub peek: Option<PeekReport>,
    /// The live stream.
    pub stream: StreamState,
    /// Engine events and connection changes, newest last.
    pub log: VecDeque<(Timestamp, String)>,
    /// Simulated publishers and the subjects they publish to (demos), for the topology.
    pub publishers: Vec<(String, Vec<String>)>,
    /// Selected row of the topology.
    pub topo_selected: usize,
    /// Workshop mode: more spacing in the topology, engine-internal events hidden.
    pub workshop: bool,
    /// Selected log line offset from the newest.
    pub log_selected: usize,
    /// A short message in the footer, with when it was set.
    pub flash: Option<(Timestamp, String)>,
    /// Colours.
    pub theme: Theme,
    /// Keys in effect.
    pub keymap: keymap::Keymap,
    /// Mouse capture on.
    pub mouse: bool,
    /// The time the view is rendered at (ages and "ago" read it).
    pub now: Timestamp,
    /// Set when the user quits.
    pub quit: bool,
    /// Topics seen in the stream, for brokers that cannot list topics (MQTT): messages, bytes, last.
    pub seen: BTreeMap<Name, (u64, u64, Timestamp)>,
    /// Whether the broker lists its topics; `false` once a listing failed (RabbitMQ without its
    /// management API), so the view counts what the stream shows instead.
    pub lists_topics: bool,
    /// The live demo as last reported, when one runs.
    pub demo: Option<crate::demo::live::DemoStatus>,
}

/// Most log lines kept.
const LOG_LINES: usize = 1000;

impl App {
    /// A fresh app for `broker` with the given stream caps.
    pub fn new(
        broker: String,
        caps: Capabilities,
        theme: Theme,
        stream_count: usize,
        stream_bytes: usize,
    ) -> Self {
        App {
            seen: BTreeMap::new(),
            lists_topics: caps.has(Capability::TopicAdmin),
            view: View::Topics,
            help: false,
            prompt: None,
            composer: None,
            broker,
            caps,
            link: Link::Up,
            topics: Vec::new(),
            topic_filter: String::new(),
            topic_sort: TopicSort::Name,
            sort_reverse: false,
            tree: false,
            topic_selected: 0,
            subs: Vec::new(),
            sub_filter: String::new(),
            sub_selected: 0,
            backlog_history: BTreeMap::new(),
            show_ack_state: false,
            peek: None,
            stream: StreamState::new(stream_count, stream_bytes),
            log: VecDeque::new(),
            publishers: Vec::new(),
            topo_selected: 0,
            workshop: false,
            log_selected: 0,
            flash: None,
            theme,
            keymap: keymap::Keymap::default(),
            mouse: true,
            now: Timestamp::ZERO,
            quit: false,
            demo: None,
        }
    }

    /// Topics after the text filter and sort, as shown.
    pub fn visible_topics(&self) -> Vec<&TopicInfo> {
        let needle = self.topic_filter.to_lowercase();
        let mut topics: Vec<&TopicInfo> = self
            .topics
            .iter()
            .filter(|t| needle.is_empty() || t.name.as_str().to_lowercase().contains(&needle))
            .collect();
        match self.topic_sort {
            TopicSort::Name => topics.sort_by(|a, b| a.name.cmp(&b.name)),
            TopicSort::Rate => {
                topics.sort_by(|a, b| b.publish_rate.unwrap_or(0.0).total_cmp(&a.publish_rate.unwrap_or(0.0)))
            }
            TopicSort::Messages => topics.sort_by_key(|t| std::cmp::Reverse(t.messages)),
            TopicSort::Bytes => topics.sort_by_key(|t| std::cmp::Reverse(t.bytes)),
        }
        if self.sort_reverse {
            topics.reverse();
        }
        topics
    }

    /// The rows of the topics view: the visible topics as a list, or as a tree with a row for every
    /// level (a level that is no topic of its own shows the sums of the topics under it).
    pub fn topic_rows(&self) -> Vec<TopicRow<'_>> {
        let topics = self.visible_topics();
        if !self.tree {
            return topics
                .into_iter()
                .map(|t| TopicRow::of(t, t.name.to_string(), t.name.to_string(), 0))
                .collect();
        }
        let sep = self.level_separator();
        let mut root = TreeNode::default();
        for t in topics {
            let mut node = &mut root;
            for level in t.name.as_str().split(sep) {
                node = node.children.entry(level.to_string()).or_default();
            }
            node.topic = Some(t);
        }
        let mut rows = Vec::new();
        root.flatten("", 0, sep, self.topic_sort, self.sort_reverse, &mut rows);
        rows
    }

    /// Subscriptions after the text filter, as shown.
    pub fn visible_subs(&self) -> Vec<&SubscriptionInfo> {
        let needle = self.sub_filter.to_lowercase();
        self.subs
            .iter()
            .filter(|s| {
                needle.is_empty()
                    || s.name.as_str().to_lowercase().contains(&needle)
                    || s.topic.as_str().to_lowercase().contains(&needle)
            })
            .collect()
    }

    /// How many partitions topic `name` has (1 when it is not listed).
    pub fn partitions_of(&self, name: &Name) -> u32 {
        self.topics.iter().find(|t| &t.name == name).map_or(1, |t| t.partitions.max(1))
    }

    /// The selected subscription.
    pub fn selected_sub(&self) -> Option<&SubscriptionInfo> {
        self.visible_subs().get(self.sub_selected).copied()
    }

    /// Whether the backlog of `name` is shrinking, growing, or not moving.
    pub fn trend(&self, s: &SubscriptionInfo) -> &'static str {
        let Some(history) = self.backlog_history.get(&s.name) else { return "" };
        let (Some(first), Some(last)) = (history.front(), history.back()) else { return "" };
        if *last == 0 {
            ""
        } else if last > first {
            "growing"
        } else if last < first {
            "draining"
        } else if s.deliver_rate == Some(0.0) && s.ack_rate == Some(0.0) {
            "stalled"
        } else {
            "steady"
        }
    }

    /// Takes in a received message.
    pub fn ingest(&mut self, message: Message) {
        if !self.lists_topics {
            let seen = self.seen.entry(message.subject().clone()).or_insert((0, 0, message.publish_time));
            seen.0 += 1;
            seen.1 += message.size() as u64;
            seen.2 = message.publish_time;
        }
        self.stream.push(message);
    }

    /// The character that separates levels of a topic name in the tree: `/` on MQTT, `.` elsewhere.
    pub fn level_separator(&self) -> char {
        if self.broker.starts_with("mqtt") { '/' } else { '.' }
    }

    /// Topics built from what the stream showed, for a broker that cannot list its topics.
    fn seen_topics(&self) -> Vec<TopicInfo> {
        self.seen
            .iter()
            .map(|(name, &(messages, bytes, last))| TopicInfo {
                last_publish: Some(last),
                ..TopicInfo::external(name.clone(), messages, Some(bytes))
            })
            .collect()
    }

    /// Records that a listener fell behind.
    pub fn lagged(&mut self, skipped: u64) {
        self.note(format!(
            "the stream fell behind: {skipped} message(s) were dropped before reaching the TUI"
        ));
    }

    /// Takes in polled topics (`None`: the listing failed) and subscriptions.
    pub fn stats(&mut self, topics: Option<Vec<TopicInfo>>, subs: Option<Vec<SubscriptionInfo>>) {
        // A broker that cannot list topics (MQTT; RabbitMQ without its management API) gets the topics
        // its stream has shown, counted here.
        if topics.is_none() && self.lists_topics {
            self.lists_topics = false;
            self.note(
                "this broker does not list its topics here: the topics view counts what the stream shows"
                    .into(),
            );
        }
        self.topics = match topics {
            Some(topics) if self.lists_topics => topics,
            _ => self.seen_topics(),
        };
        if let Some(subs) = subs {
            for s in &subs {
                let h = self.backlog_history.entry(s.name.clone()).or_default();
                h.push_back(s.backlog);
                while h.len() > TREND_SAMPLES {
                    h.pop_front();
                }
            }
            self.backlog_history.retain(|name, _| subs.iter().any(|s| s.name == *name));
            self.subs = subs;
        }
        self.topic_selected = self.topic_selected.min(self.topic_rows().len().saturating_sub(1));
        self.sub_selected = self.sub_selected.min(self.visible_subs().len().saturating_sub(1));
    }

    /// Adds a line to the events log.
    pub fn note(&mut self, line: String) {
        self.log.push_back((self.now, line));
        while self.log.len() > LOG_LINES {
            self.log.pop_front();
        }
    }

    fn flash(&mut self, text: impl Into<String>) {
        self.flash = Some((self.now, text.into()));
    }

    /// Handles a key: typing goes to the open prompt or composer, anything else through the keymap.
    pub fn key(&mut self, key: KeyEvent) -> Vec<Effect> {
        if key.code == KeyCode::Char('c') && key.modifiers.contains(KeyModifiers::CONTROL) {
            self.quit = true;
            return Vec::new();
        }
        if self.composer.is_some() {
            return self.compose_key(key);
        }
        if self.prompt.is_some() {
            return self.prompt_key(key);
        }
        if self.help {
            // Any key closes help; it is not also acted on.
            self.help = false;
            return Vec::new();
        }
        match self.keymap.lookup(self.view, key) {
            Some(action) => self.update(action),
            None => Vec::new(),
        }
    }

    /// Applies an action.
    pub fn update(&mut self, action: Action) -> Vec<Effect> {
        let page = 10;
        match action {
            Action::Quit => self.quit = true,
            Action::Back => self.back(),
            Action::Help => self.help = true,
            Action::Palette => self.prompt = Some((Prompt::Palette, String::new())),
            Action::SetView(v) => self.view = v,
            Action::NextView | Action::PrevView => {
                let i = VIEWS.iter().position(|v| *v == self.view).unwrap_or(0);
                let n = VIEWS.len();
                let next = if action == Action::NextView { (i + 1) % n } else { (i + n - 1) % n };
                self.view = VIEWS[next];
            }
            Action::Up => self.move_by(-1),
            Action::Down => self.move_by(1),
            Action::PageUp => self.move_by(-page),
            Action::PageDown => self.move_by(page),
            Action::Top => self.move_by(i64::MIN / 2),
            Action::Bottom => self.move_by(i64::MAX / 2),
            Action::Enter => self.enter(),
            Action::Filter => {
                let current = match self.view {
                    View::Topics => self.topic_filter.clone(),
                    View::Subscriptions => self.sub_filter.clone(),
                    _ => self.stream.filter.text.clone(),
                };
                let prompt = if self.view == View::Stream { Prompt::StreamFilter } else { Prompt::Filter };
                self.prompt = Some((prompt, current));
            }
            Action::StreamFilter => {
                self.prompt = Some((Prompt::StreamFilter, self.stream.filter.text.clone()))
            }
            Action::TogglePause => self.stream.toggle_pause(),
            Action::ToggleFollow => {
                self.stream.follow = !self.stream.follow;
                if !self.stream.follow {
                    self.stream.selected = self.stream.selection().unwrap_or(0);
                }
            }
            Action::CyclePayload => {
                self.stream.payload_view = match self.stream.payload_view {
                    PayloadView::Pretty => PayloadView::Raw,
                    PayloadView::Raw => PayloadView::Hex,
                    PayloadView::Hex => PayloadView::Pretty,
                };
                self.stream.detail = true;
            }
            Action::Copy => {
                if let Some(e) = self.stream.selected_entry() {
                    let text = String::from_utf8_lossy(&e.message.payload).into_owned();
                    self.flash("payload copied to the clipboard");
                    return vec![Effect::Copy(text)];
                }
            }
            Action::Export => return vec![Effect::Export(String::new())],
            Action::Compose => {
                let topic = match self.view {
                    View::Stream => self.stream.selected_entry().map(|e| e.message.subject().to_string()),
                    View::Topics => self
                        .topic_rows()
                        .get(self.topic_selected)
                        .and_then(|r| r.topic)
                        .map(|t| t.name.to_string()),
                    _ => None,
                };
                self.composer = Some(Composer { topic: topic.unwrap_or_default(), ..Composer::default() });
            }
            Action::Republish => {
                if let Some(e) = self.stream.selected_entry() {
                    if e.truncated() {
                        self.flash(
                            "this message was cut for display; republishing would send a shortened copy",
                        );
                        return Vec::new();
                    }
                    let m = &e.message;
                    let mut req = PublishRequest::new(m.subject().clone(), m.payload.clone());
                    req.key = m.key().cloned();
                    req.headers = m.headers().clone();
                    self.flash(format!("republished to {}", m.subject()));
                    return vec![Effect::Publish(req)];
                }
            }
            Action::CycleSort => {
                self.topic_sort = match self.topic_sort {
                    TopicSort::Name => TopicSort::Rate,
                    TopicSort::Rate => TopicSort::Messages,
                    TopicSort::Messages => TopicSort::Bytes,
                    TopicSort::Bytes => TopicSort::Name,
                };
            }
            Action::ReverseSort => self.sort_reverse = !self.sort_reverse,
            Action::ToggleTree => {
                self.tree = !self.tree;
                self.topic_selected = self.topic_selected.min(self.topic_rows().len().saturating_sub(1));
            }
            Action::ToggleAckState => self.show_ack_state = !self.show_ack_state,
            Action::SeekPrompt => {
                if !self.caps.has(Capability::Seek) {
                    self.flash("seek is not available on this broker");
                } else if let Some(s) = self.selected_sub() {
                    self.prompt = Some((Prompt::Seek(s.name.clone()), String::new()));
                }
            }
            Action::ToggleMouse => {
                self.mouse = !self.mouse;
                self.flash(if self.mouse {
                    "mouse on"
                } else {
                    "mouse off: the terminal selects text again"
                });
                return vec![Effect::Mouse(self.mouse)];
            }
            Action::ClearBuffer => {
                self.stream.clear();
                self.flash("stream buffer cleared");
            }
            Action::Demo(d) => return self.demo_control(d),
        }
        Vec::new()
    }

    /// A live demo control, aimed at the selected node of the topology.
    fn demo_control(&mut self, d: super::action::DemoAction) -> Vec<Effect> {
        use super::action::DemoAction;
        use crate::demo::live::Control;
        if self.demo.is_none() {
            self.flash("live controls work in a running demo: pubsub demo NAME");
            return Vec::new();
        }
        let control = match d {
            DemoAction::Pause => Control::Pause,
            DemoAction::Slower => Control::Slower,
            DemoAction::Faster => Control::Faster,
            DemoAction::Step => Control::Step,
            DemoAction::Restart => Control::Restart,
            DemoAction::Change(c) => Control::Change(c, super::views::topology::selected_node(self)),
        };
        vec![Effect::Demo(control)]
    }

    fn back(&mut self) {
        if self.stream.detail && self.view == View::Stream {
            self.stream.detail = false;
        } else if self.show_ack_state && self.view == View::Subscriptions {
            self.show_ack_state = false;
        } else if self.view == View::Stream
            && (self.stream.scope.is_some() || !self.stream.filter.text.is_empty())
        {
            self.stream.scope = None;
            self.stream.filter = StreamFilter::default();
            self.stream.refilter();
        } else if self.view != View::Topics {
            self.view = View::Topics;
        } else {
            self.quit = true;
        }
    }

    fn move_by(&mut self, delta: i64) {
        let clamp = |current: usize, len: usize| -> usize {
            if len == 0 {
                return 0;
            }
            let next = (current as i64).saturating_add(delta).clamp(0, len as i64 - 1);
            usize::try_from(next).unwrap_or(0)
        };
        match self.view {
            View::Topics => self.topic_selected = clamp(self.topic_selected, self.topic_rows().len()),
            View::Subscriptions => {
                let next = clamp(self.sub_selected, self.visible_subs().len());
                if next != self.sub_selected {
                    self.peek = None;
                }
                self.sub_selected = next;
            }
            View::Stream => self.stream.move_by(delta),
            View::Topology => {
                let nodes = super::views::topology::node_count(self);
                self.topo_selected = clamp(self.topo_selected, nodes);
            }
            View::Log => self.log_selected = clamp(self.log_selected, self.log.len()),
        }
    }

    fn enter(&mut self) {
        match self.view {
            View::Topics => {
                let rows = self.topic_rows();
                let Some(row) = rows.get(self.topic_selected) else { return };
                match row.topic {
                    Some(t) => {
                        let name = t.name.clone();
                        self.stream.scope = Some(name);
                    }
                    None => {
                        // A level of the tree: the stream of every topic under it.
                        let text = format!("glob:{}{}*", row.path, self.level_separator());
                        match StreamFilter::parse(&text) {
                            Ok(filter) => {
                                self.stream.scope = None;
                                self.stream.filter = filter;
                            }
                            Err(e) => {
                                self.flash(format!("cannot open {}: {e}", row.path));
                                return;
                            }
                        }
                    }
                }
                self.stream.refilter();
                self.stream.follow = true;
                self.view = View::Stream;
            }
            View::Stream => self.stream.detail = !self.stream.detail,
            View::Subscriptions => self.show_ack_state = !self.show_ack_state,
            View::Topology | View::Log => {}
        }
    }

    fn prompt_key(&mut self, key: KeyEvent) -> Vec<Effect> {
        let Some((kind, mut text)) = self.prompt.take() else { return Vec::new() };
        match key.code {
            KeyCode::Esc => return Vec::new(),
            KeyCode::Backspace => {
                text.pop();
            }
            // Ctrl+U clears the line, as in a shell; other Ctrl keys type nothing.
            KeyCode::Char('u') if key.modifiers.contains(KeyModifiers::CONTROL) => text.clear(),
            KeyCode::Char(_) if key.modifiers.contains(KeyModifiers::CONTROL) => {}
            KeyCode::Char(c) => text.push(c),
            KeyCode::Enter => return self.submit(kind, text),
            _ => {}
        }
        // Text filters apply as they are typed.
        if kind == Prompt::Filter {
            match self.view {
                View::Topics => self.topic_filter = text.clone(),
                View::Subscriptions => self.sub_filter = text.clone(),
                _ => {}
            }
        }
        self.prompt = Some((kind, text));
        Vec::new()
    }

    fn submit(&mut self, kind: Prompt, text: String) -> Vec<Effect> {
        match kind {
            Prompt::Filter => {}
            Prompt::StreamFilter => match StreamFilter::parse(&text) {
                Ok(filter) => {
                    self.stream.filter = filter;
                    self.stream.refilter();
                }
                Err(e) => self.flash(format!("filter not applied: {e}")),
            },
            Prompt::Seek(sub) => match Position::parse(&text, self.now) {
                Ok(p) => {
                    self.flash(format!("seeking {sub} to {text}"));
                    return vec![Effect::Seek(sub, p.seek())];
                }
                Err(e) => self.flash(e),
            },
            Prompt::Palette => return self.command(text.trim()),
        }
        Vec::new()
    }

    /// Runs a `:` command.
    pub fn command(&mut self, text: &str) -> Vec<Effect> {
        let mut words = text.split_whitespace();
        match (words.next(), words.next(), words.next()) {
            (Some("q" | "quit" | "exit"), _, _) => self.quit = true,
            (Some("topics"), _, _) => self.view = View::Topics,
            (Some("subs" | "subscriptions"), _, _) => self.view = View::Subscriptions,
            (Some("log" | "events"), _, _) => self.view = View::Log,
            (Some("topo" | "topology"), _, _) => self.view = View::Topology,
            (Some("help"), _, _) => self.help = true,
            (Some("stream"), pattern, _) => {
                self.view = View::Stream;
                self.stream.scope = None;
                match StreamFilter::parse(pattern.unwrap_or("")) {
                    Ok(f) => self.stream.filter = f,
                    Err(e) => self.flash(e),
                }
                self.stream.refilter();
            }
            (Some("pub" | "publish"), topic, _) => {
                self.composer = Some(Composer { topic: topic.unwrap_or("").to_string(), ..Composer::default() });
            }
            (Some("theme"), Some(name), _) => return vec![Effect::Theme(name.to_string())],
            (Some("mouse"), Some(state @ ("on" | "off")), _) => {
                self.mouse = state == "on";
                return vec![Effect::Mouse(self.mouse)];
            }
            (Some("export"), path, _) => return vec![Effect::Export(path.unwrap_or("").to_string())],
            (Some("seek"), Some(sub), Some(target)) => match (Name::new(sub), Position::parse(target, self.now)) {
                (Ok(name), Ok(p)) => return vec![Effect::Seek(name, p.seek())],
                (Err(e), _) => self.flash(e.to_string()),
                (_, Err(e)) => self.flash(e),
            },
            (Some(other), _, _) => self.flash(format!(
                "unknown command \":{other}\"; try :topics :stream [filter] :subs :log :pub TOPIC :seek SUB TARGET :theme NAME :mouse on|off :export [PATH] :q"
            )),
            (None, _, _) => {}
        }
        Vec::new()
    }

    fn compose_key(&mut self, key: KeyEvent) -> Vec<Effect> {
        let Some(composer) = self.composer.as_mut() else { return Vec::new() };
        let ctrl = key.modifiers.contains(KeyModifiers::CONTROL);
        match key.code {
            KeyCode::Esc => self.composer = None,
            KeyCode::Char('s') if ctrl => match composer.request() {
                Ok(req) => {
                    let subject = req.subject.clone();
                    self.composer = None;
                    self.flash(format!("published to {subject}"));
                    return vec![Effect::Publish(req)];
                }
                Err(e) => composer.error = Some(e),
            },
            KeyCode::Tab => composer.field = (composer.field + 1) % 4,
            KeyCode::BackTab => composer.field = (composer.field + 3) % 4,
            KeyCode::Enter if composer.field == 3 => composer.payload.push('\n'),
            KeyCode::Enter => composer.field += 1,
            KeyCode::Backspace => {
                composer.field_mut().pop();
            }
            KeyCode::Char('u') if ctrl => composer.field_mut().clear(),
            KeyCode::Char(c) if !ctrl => composer.field_mut().push(c),
            _ => {}
        }
        Vec::new()
    }
}

#[cfg(test)]
mod tests;
