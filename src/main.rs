//! The `kiln` command-line launcher.

fn main() {}
