//! Trains the small digits CNN in this process and checks the held-out
//! accuracy: `cargo run --release --example digits_cnn`.
//!
//! The data is the UCI handwritten digits shipped in data/digits/; the
//! held-out 20% split is fixed (stratified, seeded), so the figure is
//! comparable across runs and machines.

use anyhow::{bail, Result};
use kiln::digits::{self, DigitsSettings};

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .init();
    let job = DigitsSettings::default();
    let (_, report) = digits::run(&job, false)?;
    println!("held-out: {}", report.held_out);
    println!(
        "training: {} epochs, {:.1} s, {:.0} samples/s",
        report.summary.state.epoch, report.summary.seconds, report.summary.samples_per_second
    );
    if report.held_out.top1 < 0.97 {
        bail!(
            "held-out accuracy {:.2}% is below 97%",
            report.held_out.top1 * 100.0
        );
    }
    Ok(())
}
