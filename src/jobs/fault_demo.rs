//! The `panic-then-count` job kind: a fault-injection demo. Its first
//! action maps every element through a function that panics, so each task
//! fails on every executor until its attempts run out and the action fails
//! with an error naming the task; the job then counts the same dataset,
//! showing the driver and executors survived.

use kiln_runtime::{JobContext, Registry};
use serde::{Deserialize, Serialize};

use crate::jobs::{bounded, Job, JobEnv, JobError, Result, MAX_PARTITIONS};

/// The kind's name.
pub const KIND: &str = "panic-then-count";

/// Settings of the demo.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PanicThenCountSettings {
    /// Partitions of the 100 numbers.
    #[serde(default = "default_partitions")]
    pub partitions: u32,
}

fn default_partitions() -> u32 {
    8
}

/// The demo kind.
#[derive(Debug, Clone, Copy, Default)]
pub struct PanicThenCount;

impl Job for PanicThenCount {
    type Settings = PanicThenCountSettings;

    fn kind(&self) -> &'static str {
        KIND
    }

    fn register(&self, r: &mut Registry) {
        r.register_map("kiln.panic_on_every_element", |x: u64| -> u64 {
            panic!("injected failure on element {x}")
        });
    }

    fn validate(&self, s: &mut PanicThenCountSettings, _env: &JobEnv) -> Result<String> {
        bounded(KIND, "partitions", s.partitions, 1..=MAX_PARTITIONS)?;
        Ok(format!("panic, then count, in {} partitions", s.partitions))
    }

    async fn run(&self, s: PanicThenCountSettings, ctx: JobContext) -> Result<()> {
        {
            let ds = ctx
                .driver()
                .parallelize((0..100u64).collect::<Vec<_>>(), s.partitions)?;
            match ds.map::<u64>("kiln.panic_on_every_element")?.count().await {
                Ok(n) => {
                    return Err(JobError::step(
                        "the panicking action",
                        format!("unexpectedly succeeded with {n}"),
                    ))
                }
                Err(e) => ctx.line(format!("JOB-ERROR {e}")),
            }
            ctx.line(format!("COUNT {}", ds.count().await?));
            Ok(())
        }
    }
}
