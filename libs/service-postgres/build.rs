//! Rebuilds the crate when an outbox migration changes: `sqlx::migrate!` embeds them at compile time.

fn main() {
    println!("cargo:rerun-if-changed=../../sql/outbox");
}
