//! The codemap's order holds: every module imports only the modules below it (ARCHITECTURE.md
//! "Layers"). A new arrow that runs upward fails here with the file that draws it.

use std::collections::BTreeSet;
use std::path::Path;

/// Each top-level module with the modules it may import.
const LAYERS: &[(&str, &[&str])] = &[
    ("model", &[]),
    ("config", &[]),
    ("human", &["model"]),
    ("store", &["model"]),
    ("engine", &["model", "store"]),
    ("protocol", &["model"]),
    ("broker", &["model", "human", "protocol", "engine", "store", "config"]),
    ("server", &["model", "protocol", "engine", "broker"]),
    ("demo", &["model", "human", "engine", "broker"]),
    ("tui", &["model", "human", "protocol", "broker", "demo"]),
    ("cli", &["model", "human", "store", "engine", "protocol", "broker", "server", "tui", "demo", "config"]),
];

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The modules `text` names as `crate::MODULE`.
fn imports(text: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("crate::") {
        rest = &rest[at + "crate::".len()..];
        let name: String = rest.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
        found.insert(name);
    }
    found
}

#[test]
fn no_module_imports_a_module_above_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut wrong = Vec::new();
    let mut checked = 0;
    for (module, allowed) in LAYERS {
        let mut files = Vec::new();
        rust_files(&src.join(module), &mut files);
        let single = src.join(format!("{module}.rs"));
        if single.exists() {
            files.push(single);
        }
        assert!(!files.is_empty(), "module {module} has no files");
        for file in files {
            let text = std::fs::read_to_string(&file).unwrap();
            checked += 1;
            for used in imports(&text) {
                if used != *module
                    && LAYERS.iter().any(|(m, _)| *m == used)
                    && !allowed.contains(&used.as_str())
                {
                    wrong.push(format!("{} imports crate::{used}", file.display()));
                }
            }
        }
    }
    assert!(checked > 50, "only {checked} files read");
    assert!(wrong.is_empty(), "imports that run upward:\n{}", wrong.join("\n"));
}

#[test]
fn every_module_of_the_crate_has_a_layer() {
    let lib = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/lib.rs")).unwrap();
    let modules: Vec<&str> =
        lib.lines().filter_map(|l| l.strip_prefix("pub mod ")).map(|l| l.trim_end_matches(';')).collect();
    assert!(modules.len() >= 10, "{modules:?}");
    for m in &modules {
        assert!(LAYERS.iter().any(|(name, _)| name == m), "module {m} is missing from LAYERS");
    }
}
