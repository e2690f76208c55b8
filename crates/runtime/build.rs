//! Rebuilds the crate when a migration is added or changed: `sqlx::migrate!` embeds the
//! `migrations/` folder at compile time, and a new file alone would not trigger a rebuild.

fn main() {
    println!("cargo:rerun-if-changed=../../migrations");
}
