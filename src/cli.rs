//! The `kiln` command line as library code: argument structs (clap) and
//! the functions the binary calls, which print. Job logic lives in
//! [`crate::jobs`] and [`crate::training`]; these modules only turn flags
//! into settings, start clusters and clients, and print what comes back.

pub mod checkpoint;
pub mod cluster;
pub mod detect;
pub mod job_args;
pub mod model;
pub mod speech;
pub mod submit;
pub mod train;
pub mod ui;

use std::io::Write;

use anyhow::Context;

/// A multi-threaded tokio runtime for a command.
pub fn tokio_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")
}

/// Prints one result line on stdout and flushes it (tests and scripts
/// read these lines as they come).
pub fn out_line(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// An error and its causes on one line, leaving out a cause whose text
/// the message before it already says (library errors often carry their
/// source's text as well as the source).
pub fn error_text(e: &anyhow::Error) -> String {
    let mut text = e.to_string();
    for cause in e.chain().skip(1) {
        let c = cause.to_string();
        if !text.contains(&c) {
            text.push_str(": ");
            text.push_str(&c);
        }
    }
    text
}
