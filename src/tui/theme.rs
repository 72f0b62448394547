//! Themes: semantic colour roles read from TOML. The built-ins in `themes/` are embedded at build time;
//! a user theme in the config directory's `themes/` may override any subset of a built-in's keys.

use std::collections::BTreeMap;
use std::path::Path;

use ratatui::style::{Color, Modifier, Style};

/// The built-in themes, by name.
pub const BUILT_IN: &[(&str, &str)] = &[
    ("default", include_str!("../../themes/default.toml")),
    ("light", include_str!("../../themes/light.toml")),
    ("high-contrast", include_str!("../../themes/high-contrast.toml")),
    ("colorblind", include_str!("../../themes/colorblind.toml")),
    ("mono", include_str!("../../themes/mono.toml")),
];

/// Resolved colours for every role the views use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Theme {
    /// Its name.
    pub name: String,
    /// Text.
    pub fg: Color,
    /// Background.
    pub bg: Color,
    /// Secondary text.
    pub dim: Color,
    /// Titles and highlights.
    pub accent: Color,
    /// Topic names.
    pub topic: Color,
    /// Subjects.
    pub subject: Color,
    /// Keys.
    pub key: Color,
    /// Healthy values.
    pub ok: Color,
    /// Attention.
    pub warn: Color,
    /// Problems.
    pub error: Color,
    /// In-flight messages.
    pub inflight: Color,
    /// Acked messages.
    pub acked: Color,
    /// Redelivered messages.
    pub redelivered: Color,
    /// Dead letters.
    pub dlq: Color,
    /// Selected row text.
    pub selection_fg: Color,
    /// Selected row background.
    pub selection_bg: Color,
    /// Borders.
    pub border: Color,
    /// The focused pane's border.
    pub focus_border: Color,
    /// Whether the theme has no colours (selection then uses reverse video).
    pub mono: bool,
}

impl Theme {
    /// A built-in theme, or (when `config_dir` has `themes/NAME.toml`) a user theme over `default`.
    pub fn load(name: &str, config_dir: Option<&Path>) -> Result<Theme, String> {
        let base = BUILT_IN.iter().find(|(n, _)| *n == name).map(|(_, text)| *text);
        let user = config_dir.map(|d| d.join("themes").join(format!("{name}.toml"))).filter(|p| p.exists());
        let mut table = parse_table(base.unwrap_or(BUILT_IN[0].1))?;
        match (base, user) {
            (_, Some(path)) => {
                let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
                let overrides = parse_table(&text).map_err(|e| format!("{}: {e}", path.display()))?;
                table.extend(overrides);
            }
            (Some(_), None) => {}
            (None, None) => {
                let names: Vec<&str> = BUILT_IN.iter().map(|(n, _)| *n).collect();
                return Err(format!("no theme named \"{name}\"; built-in themes: {}", names.join(", ")));
            }
        }
        table.insert("name".into(), name.into());
        Theme::from_table(&table)
    }

    fn from_table(t: &BTreeMap<String, String>) -> Result<Theme, String> {
        let color = |key: &str| -> Result<Color, String> {
            let value = t.get(key).ok_or_else(|| format!("theme is missing \"{key}\""))?;
            parse_color(value).ok_or_else(|| format!("theme key \"{key}\": \"{value}\" is not a colour"))
        };
        let theme = Theme {
            name: t.get("name").cloned().unwrap_or_default(),
            fg: color("fg")?,
            bg: color("bg")?,
            dim: color("dim")?,
            accent: color("accent")?,
            topic: color("topic")?,
            subject: color("subject")?,
            key: color("key")?,
            ok: color("ok")?,
            warn: color("warn")?,
            error: color("error")?,
            inflight: color("inflight")?,
            acked: color("acked")?,
            redelivered: color("redelivered")?,
            dlq: color("dlq")?,
            selection_fg: color("selection_fg")?,
            selection_bg: color("selection_bg")?,
            border: color("border")?,
            focus_border: color("focus_border")?,
            mono: false,
        };
        let mono =
            [theme.accent, theme.selection_bg, theme.ok, theme.error].iter().all(|c| *c == Color::Reset);
        Ok(Theme { mono, ..theme })
    }

    /// Plain text.
    pub fn text(&self) -> Style {
        Style::default().fg(self.fg).bg(self.bg)
    }

    /// A foreground colour on the theme's background.
    pub fn fg(&self, color: Color) -> Style {
        Style::default().fg(color)
    }

    /// The selected row.
    pub fn selected(&self) -> Style {
        if self.mono {
            Style::default().add_modifier(Modifier::REVERSED)
        } else {
            Style::default().fg(self.selection_fg).bg(self.selection_bg).add_modifier(Modifier::BOLD)
        }
    }

    /// A pane border.
    pub fn border(&self, focused: bool) -> Style {
        Style::default().fg(if focused { self.focus_border } else { self.border })
    }
}

impl Default for Theme {
    fn default() -> Self {
        // The embedded default theme is checked by a test, so this falls back only on a build mistake.
        Theme::load("default", None).unwrap_or(Theme {
            name: "fallback".into(),
            fg: Color::Reset,
            bg: Color::Reset,
            dim: Color::DarkGray,
            accent: Color::Cyan,
            topic: Color::Cyan,
            subject: Color::Cyan,
            key: Color::Yellow,
            ok: Color::Green,
            warn: Color::Yellow,
            error: Color::Red,
            inflight: Color::Blue,
            acked: Color::Green,
            redelivered: Color::Yellow,
            dlq: Color::Red,
            selection_fg: Color::Black,
            selection_bg: Color::Cyan,
            border: Color::DarkGray,
            focus_border: Color::Cyan,
            mono: false,
        })
    }
}

fn parse_table(text: &str) -> Result<BTreeMap<String, String>, String> {
    let value: toml::Table = toml::from_str(text).map_err(|e| e.to_string())?;
    value
        .into_iter()
        .map(|(k, v)| match v {
            toml::Value::String(s) => Ok((k, s)),
            other => Err(format!("theme key \"{k}\" must be a string, not {other}")),
        })
        .collect()
}

/// Parses a colour name, `reset`, or `#rrggbb`.
pub fn parse_color(text: &str) -> Option<Color> {
    let t = text.trim().to_ascii_lowercase();
    if let Some(hex) = t.strip_prefix('#') {
        if hex.len() != 6 {
            return None;
        }
        let n = u32::from_str_radix(hex, 16).ok()?;
        let [_, r, g, b] = n.to_be_bytes();
        return Some(Color::Rgb(r, g, b));
    }
    Some(match t.as_str() {
        "reset" | "default" => Color::Reset,
        "black" => Color::Black,
        "red" => Color::Red,
        "green" => Color::Green,
        "yellow" => Color::Yellow,
        "blue" => Color::Blue,
        "magenta" => Color::Magenta,
        "cyan" => Color::Cyan,
        "gray" | "grey" => Color::Gray,
        "darkgray" | "darkgrey" => Color::DarkGray,
        "lightred" => Color::LightRed,
        "lightgreen" => Color::LightGreen,
        "lightyellow" => Color::LightYellow,
        "lightblue" => Color::LightBlue,
        "lightmagenta" => Color::LightMagenta,
        "lightcyan" => Color::LightCyan,
        "white" => Color::White,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_built_in_theme_parses() {
        for (name, _) in BUILT_IN {
            let theme = Theme::load(name, None).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(theme.name, *name);
        }
        assert!(Theme::load("mono", None).unwrap().mono);
        assert!(!Theme::load("default", None).unwrap().mono);
    }

    #[test]
    fn user_theme_overrides_only_what_it_names() {
        let dir = std::env::temp_dir().join(format!("pubsub-theme-test-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("themes")).unwrap();
        std::fs::write(dir.join("themes/mine.toml"), "accent = \"#ff0000\"\n").unwrap();
        let theme = Theme::load("mine", Some(&dir)).unwrap();
        assert_eq!(theme.accent, Color::Rgb(255, 0, 0));
        assert_eq!(theme.ok, Theme::load("default", None).unwrap().ok);
        std::fs::write(dir.join("themes/bad.toml"), "accent = \"plaid\"\n").unwrap();
        assert!(Theme::load("bad", Some(&dir)).unwrap_err().contains("plaid"));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn unknown_theme_lists_the_built_ins() {
        assert!(Theme::load("neon", None).unwrap_err().contains("high-contrast"));
    }
}
