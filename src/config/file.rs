//! The configuration file (`config.toml` in the config directory): default broker, autostart, and named
//! broker profiles so that `--broker staging` means a URL and its token.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// The file's contents; every key is optional.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// Broker used when `--broker` and `PUBSUB_BROKER` are absent.
    pub broker: Option<String>,
    /// Whether `local` starts a daemon when none runs (default true).
    pub autostart: Option<bool>,
    /// Named brokers.
    #[serde(default)]
    pub profiles: BTreeMap<String, Profile>,
}

/// A named broker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    /// Its URL.
    pub broker: String,
    /// Its token, for `ws://` servers that need one.
    pub token: Option<String>,
}

impl ConfigFile {
    /// Reads `path`; a missing file is an empty configuration, a malformed one an error naming the file.
    pub fn load(path: &Path) -> Result<ConfigFile, String> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(ConfigFile::default()),
            Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
        };
        toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// The broker URL and token a `--broker` value (or its absence) stands for.
    pub fn resolve(&self, requested: Option<&str>) -> (String, Option<String>) {
        let chosen =
            requested.map(str::to_string).or_else(|| self.broker.clone()).unwrap_or_else(|| "local".into());
        match self.profiles.get(&chosen) {
            Some(profile) => (profile.broker.clone(), profile.token.clone()),
            None => (chosen, None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profiles_name_brokers_and_flags_win() {
        let config: ConfigFile = toml::from_str(
            r#"
            broker = "staging"
            [profiles.staging]
            broker = "ws://10.0.0.5:7077"
            token = "t"
            "#,
        )
        .unwrap();
        assert_eq!(config.resolve(None), ("ws://10.0.0.5:7077".into(), Some("t".into())));
        assert_eq!(config.resolve(Some("mem://")), ("mem://".into(), None));
        assert_eq!(ConfigFile::default().resolve(None), ("local".into(), None));
    }

    #[test]
    fn unknown_keys_are_refused_with_the_file_named() {
        let dir = std::env::temp_dir().join(format!("pubsub-config-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("config.toml");
        std::fs::write(&path, "brokr = \"x\"\n").unwrap();
        let err = ConfigFile::load(&path).unwrap_err();
        assert!(err.contains("config.toml") && err.contains("brokr"), "{err}");
        assert_eq!(ConfigFile::load(&dir.join("missing.toml")), Ok(ConfigFile::default()));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
