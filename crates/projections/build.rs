//! Finds the read models: every file of `src/` with a `pub fn projector() -> Arc<dyn Projector>`
//! is a projector module. Writes their `mod` declarations and the list of their projectors to
//! `$OUT_DIR/projectors.rs`, which `src/lib.rs` includes; so adding a read model is its
//! projector file and its migration, and nothing else.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::{env, fs};

/// The line that marks a projector module, as rustfmt writes it.
const MARKER: &str = "pub fn projector() -> Arc<dyn Projector> {";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let src = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?).join("src");
    // A directory: cargo looks at every file in it.
    println!("cargo:rerun-if-changed={}", src.display());
    let mut modules = Vec::new();
    for entry in fs::read_dir(&src)? {
        let path = entry?.path();
        let Some(name) = path
            .file_stem()
            .and_then(|s| s.to_str())
            .filter(|_| path.extension().is_some_and(|e| e == "rs"))
        else {
            continue;
        };
        if fs::read_to_string(&path)?
            .lines()
            .any(|line| line.trim() == MARKER)
        {
            modules.push((name.to_owned(), path.clone()));
        }
    }
    modules.sort();
    let mut out = String::new();
    for (name, path) in &modules {
        writeln!(
            out,
            "#[path = {:?}]\npub mod {name};",
            path.display().to_string()
        )?;
    }
    out.push_str(
        "\n/// Every projector module's projector, in the order of their names.\n\
         fn found() -> Vec<Arc<dyn Projector>> {\n    vec![\n",
    );
    for (name, _) in &modules {
        writeln!(out, "        {name}::projector(),")?;
    }
    out.push_str("    ]\n}\n");
    fs::write(
        PathBuf::from(env::var("OUT_DIR")?).join("projectors.rs"),
        out,
    )?;
    Ok(())
}
