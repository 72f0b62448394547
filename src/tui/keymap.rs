//! The one keymap registry: key handling, the footer and the `?` overlay all read it.

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};

use super::action::{Action, DemoAction};
use super::app::View;
use crate::demo::sim::Change;

/// Where a binding applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Everywhere (unless typing).
    Global,
    /// Lists: topics, subscriptions, stream.
    List,
    /// One view.
    View(View),
}

/// One binding.
#[derive(Debug, Clone, Copy)]
pub struct Binding {
    /// The key.
    pub code: KeyCode,
    /// Modifiers that must be held.
    pub mods: KeyModifiers,
    /// Where it applies.
    pub scope: Scope,
    /// What it does.
    pub action: Action,
    /// How the footer and help name the key.
    pub key: &'static str,
    /// What the help says it does.
    pub label: &'static str,
    /// Whether the footer shows it.
    pub footer: bool,
}

const NONE: KeyModifiers = KeyModifiers::NONE;
const CTRL: KeyModifiers = KeyModifiers::CONTROL;
const SHIFT: KeyModifiers = KeyModifiers::SHIFT;

const fn bind(
    code: KeyCode,
    mods: KeyModifiers,
    scope: Scope,
    action: Action,
    key: &'static str,
    label: &'static str,
    footer: bool,
) -> Binding {
    Binding { code, mods, scope, action, key, label, footer }
}

use Scope::{Global, List};

/// Every binding, in the order help shows them.
pub const BINDINGS: &[Binding] = &[
    bind(KeyCode::Char('?'), NONE, Global, Action::Help, "?", "help", true),
    bind(KeyCode::F(1), NONE, Global, Action::Help, "F1", "help", false),
    bind(KeyCode::Char(':'), NONE, Global, Action::Palette, ":", "command palette", true),
    bind(KeyCode::Char('q'), NONE, Global, Action::Back, "q", "back / quit", true),
    bind(KeyCode::Char('c'), CTRL, Global, Action::Quit, "Ctrl+C", "quit", false),
    bind(KeyCode::Esc, NONE, Global, Action::Back, "Esc", "close / back", false),
    bind(KeyCode::Tab, NONE, Global, Action::NextView, "Tab", "next view", false),
    bind(KeyCode::BackTab, SHIFT, Global, Action::PrevView, "Shift+Tab", "previous view", false),
    bind(KeyCode::Char('1'), NONE, Global, Action::SetView(View::Topics), "1", "topics", false),
    bind(KeyCode::Char('2'), NONE, Global, Action::SetView(View::Stream), "2", "stream", false),
    bind(KeyCode::Char('3'), NONE, Global, Action::SetView(View::Subscriptions), "3", "subscriptions", false),
    bind(KeyCode::Char('4'), NONE, Global, Action::SetView(View::Topology), "4", "topology", false),
    bind(KeyCode::Char('5'), NONE, Global, Action::SetView(View::Log), "5", "engine events", false),
    bind(KeyCode::Char('P'), SHIFT, Global, Action::Compose, "P", "publish", true),
    bind(KeyCode::Char('M'), SHIFT, Global, Action::ToggleMouse, "M", "mouse on/off", false),
    bind(KeyCode::Char('r'), CTRL, Global, Action::ClearBuffer, "Ctrl+R", "clear the stream buffer", false),
    bind(KeyCode::Down, NONE, List, Action::Down, "↓", "down", false),
    bind(KeyCode::Char('j'), NONE, List, Action::Down, "j", "down", false),
    bind(KeyCode::Up, NONE, List, Action::Up, "↑", "up", false),
    bind(KeyCode::Char('k'), NONE, List, Action::Up, "k", "up", false),
    bind(KeyCode::Home, NONE, List, Action::Top, "Home", "top", false),
    bind(KeyCode::Char('g'), NONE, List, Action::Top, "g", "top", false),
    bind(KeyCode::End, NONE, List, Action::Bottom, "End", "bottom", false),
    bind(KeyCode::Char('G'), SHIFT, List, Action::Bottom, "G", "bottom", false),
    bind(KeyCode::PageDown, NONE, List, Action::PageDown, "PgDn", "page down", false),
    bind(KeyCode::Char('d'), CTRL, List, Action::PageDown, "Ctrl+D", "page down", false),
    bind(KeyCode::PageUp, NONE, List, Action::PageUp, "PgUp", "page up", false),
    bind(KeyCode::Char('u'), CTRL, List, Action::PageUp, "Ctrl+U", "page up", false),
    bind(KeyCode::Enter, NONE, List, Action::Enter, "Enter", "open", true),
    bind(KeyCode::Char('/'), NONE, List, Action::Filter, "/", "filter", true),
    bind(KeyCode::Char('s'), NONE, Scope::View(View::Topics), Action::CycleSort, "s", "sort", true),
    bind(
        KeyCode::Char('S'),
        SHIFT,
        Scope::View(View::Topics),
        Action::ReverseSort,
        "S",
        "reverse sort",
        false,
    ),
    bind(KeyCode::Char('t'), NONE, Scope::View(View::Topics), Action::ToggleTree, "t", "tree / list", true),
    bind(KeyCode::Char(' '), NONE, Scope::View(View::Stream), Action::TogglePause, "Space", "pause", true),
    bind(KeyCode::Char('f'), NONE, Scope::View(View::Stream), Action::ToggleFollow, "f", "follow", true),
    bind(
        KeyCode::Char('v'),
        NONE,
        Scope::View(View::Stream),
        Action::CyclePayload,
        "v",
        "pretty/raw/hex",
        true,
    ),
    bind(
        KeyCode::Char('\\'),
        NONE,
        Scope::View(View::Stream),
        Action::StreamFilter,
        "\\",
        "field filter",
        true,
    ),
    bind(KeyCode::Char('y'), NONE, Scope::View(View::Stream), Action::Copy, "y", "copy payload", false),
    bind(KeyCode::Char('e'), NONE, Scope::View(View::Stream), Action::Export, "e", "export NDJSON", false),
    bind(KeyCode::Char('R'), SHIFT, Scope::View(View::Stream), Action::Republish, "R", "republish", false),
    bind(
        KeyCode::Char('a'),
        NONE,
        Scope::View(View::Subscriptions),
        Action::ToggleAckState,
        "a",
        "ack state",
        true,
    ),
    bind(KeyCode::Char('x'), NONE, Scope::View(View::Subscriptions), Action::SeekPrompt, "x", "seek", true),
    // Live demo controls, on the topology (where a demo starts); each is narrated when it acts.
    demo(KeyCode::Char(' '), DemoAction::Pause, "Space", "pause/resume", true),
    demo(KeyCode::Char('-'), DemoAction::Slower, "-", "slower", false),
    demo(KeyCode::Char('+'), DemoAction::Faster, "+", "faster", false),
    demo(KeyCode::Char('='), DemoAction::Faster, "=", "faster", false),
    demo(KeyCode::Char('.'), DemoAction::Step, ".", "step 0.1 s", true),
    demo(KeyCode::Char('r'), DemoAction::Restart, "r", "restart (same seed)", true),
    demo(KeyCode::Char('w'), DemoAction::Change(Change::AddPublisher), "w", "add publisher", false),
    demo(KeyCode::Char('W'), DemoAction::Change(Change::RemovePublisher), "W", "remove publisher", false),
    demo(KeyCode::Char('s'), DemoAction::Change(Change::AddSubscription), "s", "add subscription", false),
    demo(
        KeyCode::Char('S'),
        DemoAction::Change(Change::RemoveSubscription),
        "S",
        "remove subscription",
        false,
    ),
    demo(KeyCode::Char('c'), DemoAction::Change(Change::AddConsumer), "c", "add consumer", false),
    demo(KeyCode::Char('C'), DemoAction::Change(Change::RemoveConsumer), "C", "remove consumer", false),
    demo(KeyCode::Char(']'), DemoAction::Change(Change::RateUp), "]", "publish faster", false),
    demo(KeyCode::Char('['), DemoAction::Change(Change::RateDown), "[", "publish slower", false),
    demo(KeyCode::Char('}'), DemoAction::Change(Change::SlowDown), "}", "consumer slower", false),
    demo(KeyCode::Char('{'), DemoAction::Change(Change::SpeedUp), "{", "consumer faster", false),
    demo(KeyCode::Char('x'), DemoAction::Change(Change::Crash), "x", "crash/revive", true),
    demo(KeyCode::Char('f'), DemoAction::Change(Change::Fail), "f", "fail next 3", true),
    demo(KeyCode::Char('b'), DemoAction::Change(Change::Burst), "b", "burst 100", true),
    demo(KeyCode::Char('z'), DemoAction::Change(Change::Rewind), "z", "seek to start", true),
];

/// A demo control on the topology view; Shift is implied by the character (`W`, `+`, `}`).
const fn demo(
    code: KeyCode,
    action: DemoAction,
    key: &'static str,
    label: &'static str,
    footer: bool,
) -> Binding {
    bind(code, NONE, Scope::View(View::Topology), Action::Demo(action), key, label, footer)
}

/// The footer of a live demo: pairs of keys share one hint, so every control fits on two lines.
pub const DEMO_FOOTER: &[(&str, &str)] = &[
    ("Space", "pause"),
    ("-/+", "speed"),
    (".", "step"),
    ("r", "restart"),
    ("↑↓", "pick node"),
    ("?", "help"),
    ("q", "quit"),
    ("1-5", "views"),
    ("w/W", "pub ±"),
    ("s/S", "sub ±"),
    ("c/C", "consumer ±"),
    ("[/]", "rate"),
    ("{/}", "work time"),
    ("x", "crash"),
    ("f", "fail 3"),
    ("b", "burst"),
    ("z", "rewind"),
];

#[cfg(test)]
mod tests {
    use super::*;

    fn key(code: KeyCode) -> KeyEvent {
        KeyEvent::new(code, KeyModifiers::NONE)
    }

    fn lookup(view: View, key: KeyEvent) -> Option<Action> {
        Keymap::default().lookup(view, key)
    }

    #[test]
    fn keys_mean_what_the_registry_says_in_each_view() {
        assert_eq!(lookup(View::Stream, key(KeyCode::Char(' '))), Some(Action::TogglePause));
        assert_eq!(lookup(View::Topics, key(KeyCode::Char(' '))), None);
        assert_eq!(lookup(View::Topics, key(KeyCode::Char('j'))), Some(Action::Down));
        assert_eq!(
            lookup(View::Topics, KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL)),
            Some(Action::Quit)
        );
        assert_eq!(
            lookup(View::Topics, KeyEvent::new(KeyCode::Char('P'), KeyModifiers::SHIFT)),
            Some(Action::Compose)
        );
        assert_eq!(lookup(View::Topics, key(KeyCode::Char('P'))), Some(Action::Compose));
    }

    #[test]
    fn view_digits_run_one_to_five_without_a_gap_and_match_the_tab_titles() {
        // Issue 19: the events view was on 6, so the digits skipped 5.
        for (i, view) in [View::Topics, View::Stream, View::Subscriptions, View::Topology, View::Log]
            .into_iter()
            .enumerate()
        {
            let digit = char::from_digit(u32::try_from(i + 1).unwrap(), 10).unwrap();
            assert_eq!(lookup(View::Topics, key(KeyCode::Char(digit))), Some(Action::SetView(view)));
            assert!(view.title().starts_with(digit), "{}", view.title());
        }
        assert_eq!(lookup(View::Topics, key(KeyCode::Char('6'))), None);
    }

    #[test]
    fn no_key_is_bound_twice_in_one_scope() {
        for (i, a) in BINDINGS.iter().enumerate() {
            for b in &BINDINGS[i + 1..] {
                let same_key = a.code == b.code && a.mods == b.mods;
                assert!(!(same_key && a.scope == b.scope), "{} bound twice", a.key);
            }
        }
    }

    #[test]
    fn footer_and_help_come_from_the_registry() {
        let map = Keymap::default();
        let footer = map.footer(View::Stream);
        assert_eq!(footer.first(), Some(&("Space".to_string(), "pause")));
        assert!(footer.contains(&("?".to_string(), "help")));
        let help = map.help();
        assert!(
            help.iter().any(
                |(title, keys)| *title == "Stream" && keys.contains(&("v".to_string(), "pretty/raw/hex"))
            )
        );
    }
}

/// A binding in effect: a built-in one, possibly rebound by the user's `keymap.toml`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyBinding {
    /// The key.
    pub code: KeyCode,
    /// Modifiers.
    pub mods: KeyModifiers,
    /// Where it applies.
    pub scope: Scope,
    /// What it does.
    pub action: Action,
    /// How it is shown.
    pub key: String,
    /// What it does, in words.
    pub label: &'static str,
    /// Whether the footer shows it.
    pub footer: bool,
}

/// The keymap in effect: the built-ins with the user's overrides applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keymap {
    bindings: Vec<KeyBinding>,
}

impl Default for Keymap {
    fn default() -> Self {
        Keymap {
            bindings: BINDINGS
                .iter()
                .map(|b| KeyBinding {
                    code: b.code,
                    mods: b.mods,
                    scope: b.scope,
                    action: b.action,
                    key: b.key.to_string(),
                    label: b.label,
                    footer: b.footer,
                })
                .collect(),
        }
    }
}

/// The name of an action in `keymap.toml`.
pub fn action_name(action: Action) -> &'static str {
    match action {
        Action::Quit => "quit",
        Action::Back => "back",
        Action::Help => "help",
        Action::Palette => "palette",
        Action::SetView(View::Topics) => "topics",
        Action::SetView(View::Stream) => "stream",
        Action::SetView(View::Subscriptions) => "subscriptions",
        Action::SetView(View::Topology) => "topology",
        Action::SetView(View::Log) => "events",
        Action::NextView => "next_view",
        Action::PrevView => "prev_view",
        Action::Up => "up",
        Action::Down => "down",
        Action::PageUp => "page_up",
        Action::PageDown => "page_down",
        Action::Top => "top",
        Action::Bottom => "bottom",
        Action::Enter => "open",
        Action::Filter => "filter",
        Action::StreamFilter => "field_filter",
        Action::TogglePause => "pause",
        Action::ToggleFollow => "follow",
        Action::CyclePayload => "payload_view",
        Action::Copy => "copy",
        Action::Export => "export",
        Action::Compose => "publish",
        Action::Republish => "republish",
        Action::CycleSort => "sort",
        Action::ReverseSort => "reverse_sort",
        Action::ToggleTree => "tree",
        Action::ToggleAckState => "ack_state",
        Action::SeekPrompt => "seek",
        Action::ToggleMouse => "mouse",
        Action::ClearBuffer => "clear",
        Action::Demo(d) => match d {
            DemoAction::Pause => "demo_pause",
            DemoAction::Slower => "demo_slower",
            DemoAction::Faster => "demo_faster",
            DemoAction::Step => "demo_step",
            DemoAction::Restart => "demo_restart",
            DemoAction::Change(c) => match c {
                Change::AddPublisher => "demo_add_publisher",
                Change::RemovePublisher => "demo_remove_publisher",
                Change::AddSubscription => "demo_add_subscription",
                Change::RemoveSubscription => "demo_remove_subscription",
                Change::AddConsumer => "demo_add_consumer",
                Change::RemoveConsumer => "demo_remove_consumer",
                Change::RateUp => "demo_rate_up",
                Change::RateDown => "demo_rate_down",
                Change::SlowDown => "demo_consumer_slower",
                Change::SpeedUp => "demo_consumer_faster",
                Change::Crash => "demo_crash",
                Change::Fail => "demo_fail",
                Change::Burst => "demo_burst",
                Change::Rewind => "demo_rewind",
            },
        },
    }
}

/// Parses a key such as `p`, `P`, `ctrl+r`, `F1`, `space`, `enter`, `tab`, `esc`, `up`, `pgdn`.
pub fn parse_key(text: &str) -> Result<(KeyCode, KeyModifiers), String> {
    let mut mods = KeyModifiers::NONE;
    let mut rest = text.trim();
    loop {
        let lower = rest.to_ascii_lowercase();
        if let Some(r) = lower.strip_prefix("ctrl+") {
            mods |= KeyModifiers::CONTROL;
            rest = &rest[rest.len() - r.len()..];
        } else if let Some(r) = lower.strip_prefix("alt+") {
            mods |= KeyModifiers::ALT;
            rest = &rest[rest.len() - r.len()..];
        } else {
            break;
        }
    }
    let code = match rest.to_ascii_lowercase().as_str() {
        "space" => KeyCode::Char(' '),
        "enter" | "return" => KeyCode::Enter,
        "tab" => KeyCode::Tab,
        "esc" | "escape" => KeyCode::Esc,
        "up" => KeyCode::Up,
        "down" => KeyCode::Down,
        "left" => KeyCode::Left,
        "right" => KeyCode::Right,
        "home" => KeyCode::Home,
        "end" => KeyCode::End,
        "pgup" | "pageup" => KeyCode::PageUp,
        "pgdn" | "pagedown" => KeyCode::PageDown,
        f if f.starts_with('f') && f.len() > 1 => {
            KeyCode::F(f[1..].parse().map_err(|_| format!("\"{text}\" is not a key"))?)
        }
        _ => {
            let mut chars = rest.chars();
            match (chars.next(), chars.next()) {
                (Some(c), None) => KeyCode::Char(c),
                _ => {
                    return Err(format!(
                        "\"{text}\" is not a key: use a character, ctrl+X, F1, space, enter, tab, esc, up, pgdn…"
                    ));
                }
            }
        }
    };
    Ok((code, mods))
}

impl Keymap {
    /// The built-ins with overrides from a `keymap.toml` text: `[keys]` maps action names to keys.
    pub fn from_toml(text: &str) -> Result<Keymap, String> {
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct File {
            #[serde(default)]
            keys: std::collections::BTreeMap<String, String>,
        }
        let file: File = toml::from_str(text).map_err(|e| e.to_string())?;
        let mut map = Keymap::default();
        for (name, key) in &file.keys {
            let (code, mods) = parse_key(key)?;
            let targets: Vec<usize> = map
                .bindings
                .iter()
                .enumerate()
                .filter(|(_, b)| action_name(b.action) == name)
                .map(|(i, _)| i)
                .collect();
            let Some(&first) = targets.first() else {
                return Err(format!("keymap.toml: no action named \"{name}\""));
            };
            // The new key replaces every built-in key of that action.
            let mut binding = map.bindings[first].clone();
            binding.code = code;
            binding.mods = mods;
            binding.key = key.clone();
            binding.footer = targets.iter().any(|&i| map.bindings[i].footer);
            for &i in targets.iter().rev() {
                map.bindings.remove(i);
            }
            map.bindings.insert(first, binding);
        }
        Ok(map)
    }

    /// Reads `dir/keymap.toml` when it exists.
    pub fn load(dir: Option<&std::path::Path>) -> Result<Keymap, String> {
        let Some(path) = dir.map(|d| d.join("keymap.toml")).filter(|p| p.exists()) else {
            return Ok(Keymap::default());
        };
        let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        Keymap::from_toml(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// The action a key means in `view`.
    pub fn lookup(&self, view: View, key: KeyEvent) -> Option<Action> {
        self.bindings
            .iter()
            .find(|b| applies_to(b.scope, b.action, view) && key_matches(b.code, b.mods, key))
            .map(|b| b.action)
    }

    /// The footer's hints for `view`.
    pub fn footer(&self, view: View) -> Vec<(String, &'static str)> {
        let mut specific: Vec<_> = self
            .bindings
            .iter()
            .filter(|b| b.footer && matches!(b.scope, Scope::View(v) if v == view))
            .map(|b| (b.key.clone(), b.label))
            .collect();
        specific.extend(
            self.bindings
                .iter()
                .filter(|b| {
                    b.footer
                        && (b.scope == Scope::Global
                            || (b.scope == Scope::List && applies_to(b.scope, b.action, view)))
                })
                .map(|b| (b.key.clone(), b.label)),
        );
        specific
    }

    /// Help text, grouped.
    pub fn help(&self) -> Vec<(&'static str, Vec<(String, &'static str)>)> {
        let group = |scope: Scope| {
            self.bindings.iter().filter(|b| b.scope == scope).map(|b| (b.key.clone(), b.label)).collect()
        };
        vec![
            ("Global", group(Scope::Global)),
            ("Lists", group(Scope::List)),
            ("Topics", group(Scope::View(View::Topics))),
            ("Stream", group(Scope::View(View::Stream))),
            ("Subscriptions", group(Scope::View(View::Subscriptions))),
            ("Live demo (topology; ↑↓ picks the node a control acts on)", group(Scope::View(View::Topology))),
        ]
    }
}

fn applies_to(scope: Scope, action: Action, view: View) -> bool {
    match scope {
        Scope::Global => true,
        Scope::List => {
            view != View::Log || matches!(action, Action::Up | Action::Down | Action::Top | Action::Bottom)
        }
        Scope::View(v) => v == view,
    }
}

fn key_matches(code: KeyCode, mods: KeyModifiers, key: KeyEvent) -> bool {
    code == key.code && (key.modifiers - KeyModifiers::SHIFT) == (mods - KeyModifiers::SHIFT)
}

#[cfg(test)]
mod override_tests {
    use super::*;

    #[test]
    fn keymap_toml_rebinds_an_action_everywhere_it_is_shown() {
        let map = Keymap::from_toml("[keys]\npause = \"p\"\nquit = \"ctrl+q\"\n").unwrap();
        let key = |c: char, m: KeyModifiers| KeyEvent::new(KeyCode::Char(c), m);
        assert_eq!(map.lookup(View::Stream, key('p', KeyModifiers::NONE)), Some(Action::TogglePause));
        assert_eq!(map.lookup(View::Stream, key(' ', KeyModifiers::NONE)), None, "the old key is gone");
        assert_eq!(map.lookup(View::Topics, key('q', KeyModifiers::CONTROL)), Some(Action::Quit));
        assert!(map.footer(View::Stream).contains(&("p".to_string(), "pause")));
    }

    #[test]
    fn keymap_mistakes_are_named() {
        assert!(Keymap::from_toml("[keys]\nteleport = \"t\"\n").unwrap_err().contains("teleport"));
        assert!(Keymap::from_toml("[keys]\npause = \"ctrl+banana\"\n").unwrap_err().contains("banana"));
        assert_eq!(
            Keymap::default().lookup(View::Stream, KeyEvent::new(KeyCode::Char(' '), KeyModifiers::NONE)),
            Some(Action::TogglePause)
        );
    }
}
