//! kiln-detection benchmarks (issue 6, SSD), printed as one JSON line per
//! measurement so that `benches/compare_detection.py` can put them beside
//! PyTorch's (`benches/peers/torch_ssd.py`) in one run.
//!
//! ```text
//! cargo bench --bench detection -- [--threads T] [--only ssd300,small] [--tries K]
//! ```
//! * `ssd300`: SSD300-VGG16 (21 VOC classes, 8,732 priors) inference in
//!   eval mode at batch 1 and 8: forward plus the softmax of `conf`, no NMS.
//! * `small`: the small SSD of ../shared/anchors/ssd_step.py: a training
//!   step (matching, forward, MultiBox loss, backward, SGD), inference at
//!   batch 8 and the prior matching alone.
//!
//! Method as benches/speech: warm-up, a fixed number of timed calls, median;
//! every line carries `bg_pct`, the share of the machine other processes
//! used during the loop, which is retried while that is above 10 %.

#[path = "../common/args.rs"]
mod args;
#[path = "../common/load.rs"]
mod load;
mod small;
mod ssd300;
#[path = "../common/timing.rs"]
mod timing;

fn main() {
    let Some(a) = args::parse("detection", &["ssd300", "small"]) else {
        return;
    };
    for what in &a.only {
        match what.as_str() {
            "ssd300" => ssd300::run(a.threads, a.tries),
            "small" => small::run(a.threads, a.tries),
            other => eprintln!("unknown benchmark {other:?}"),
        }
    }
}

/// The 20 VOC classes (the models add background as class 0).
pub(crate) fn voc_classes() -> Vec<String> {
    (1..=20).map(|i| format!("class{i}")).collect()
}
