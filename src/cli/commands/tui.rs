//! `pubsub tui` (and `pubsub` alone on a terminal): the terminal UI.

use std::io::IsTerminal;

use clap::Args;

use crate::cli::{CliError, Context};
use crate::config::paths::Paths;
use crate::tui::{TuiOptions, run as run_tui};

/// Options of `pubsub tui`.
#[derive(Debug, Args)]
pub struct TuiArgs {
    /// Theme: default, light, high-contrast, colorblind, mono, or one of yours (config dir `themes/`).
    #[arg(long, env = "PUBSUB_THEME", value_name = "NAME")]
    pub theme: Option<String>,
    /// Most messages kept in the stream view.
    #[arg(long, default_value_t = 10_000, value_name = "N")]
    pub stream_max_messages: usize,
    /// Most bytes kept in the stream view (MiB).
    #[arg(long, default_value_t = 64, value_name = "MIB")]
    pub stream_max_mib: usize,
    /// Start without capturing the mouse (M toggles it).
    #[arg(long)]
    pub no_mouse: bool,
    /// On quit, write the last view as text to this file.
    #[arg(long, value_name = "FILE")]
    pub snapshot: Option<std::path::PathBuf>,
}

impl Default for TuiArgs {
    /// What bare `pubsub` uses: the same defaults as the flags.
    fn default() -> Self {
        TuiArgs {
            theme: std::env::var("PUBSUB_THEME").ok().filter(|t| !t.is_empty()),
            stream_max_messages: 10_000,
            stream_max_mib: 64,
            no_mouse: false,
            snapshot: None,
        }
    }
}

/// Runs the TUI.
pub async fn run(ctx: &Context, args: TuiArgs) -> Result<(), CliError> {
    if !std::io::stdout().is_terminal() || !std::io::stdin().is_terminal() {
        return Err(CliError::Usage(
            "the TUI needs a terminal on stdin and stdout; for scripts use `pubsub sub`, `pubsub topics`, `pubsub subs`".into(),
        ));
    }
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
    let theme = args.theme.unwrap_or_else(|| if no_color { "mono".into() } else { "default".into() });
    let broker = ctx.connect().await?;
    let opts = TuiOptions {
        theme,
        config_dir: Paths::discover().ok().map(|p| p.config),
        stream_count: args.stream_max_messages.max(1),
        stream_bytes: args.stream_max_mib.max(1) << 20,
        mouse: !args.no_mouse,
        workshop: false,
        snapshot: args.snapshot.clone(),
    };
    run_tui(broker, opts).await.map_err(|e| match e {
        crate::tui::TuiError::Broker(b) => CliError::Broker(b),
        other => CliError::Failed(other.to_string()),
    })
}
