//! What the run says while it goes: one line per step on stderr, so that stdout holds
//! the tables alone.

pub fn progress(msg: impl std::fmt::Display) {
    eprintln!("relay-bench: {msg}");
}
