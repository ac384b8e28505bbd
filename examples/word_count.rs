//! A user's own binary embedding the Kiln runtime: start a local cluster
//! and count words over a directory of text files.
//!
//! ```text
//! cargo run --release --example word_count -- DIR [--executors N] [--processes]
//! ```
//!
//! With `--processes` the executors are child processes running this same
//! binary (SPMD: the child sees `__executor --join TOKEN@ADDR ...` and
//! joins); otherwise they run in this process. Either way the functions are
//! referred to by name, so both roles build the same registry.

use std::sync::Arc;

use anyhow::{bail, Context};
use kiln_runtime::{
    run_executor, transport, ExecutorConfig, ExecutorMode, LocalCluster, LocalConfig, Registry,
};

/// Every process of the program registers the same functions.
fn registry() -> Arc<Registry> {
    let mut r = Registry::new();
    r.register_flat_map("words", |line: String| {
        line.split(|c: char| !c.is_alphanumeric())
            .filter(|w| !w.is_empty())
            .map(str::to_lowercase)
            .collect::<Vec<_>>()
    })
    .register_map("one", |w: String| (w, 1u64))
    .register_reduce_by_key::<String, u64>("add", |a, b| a + b);
    Arc::new(r)
}

/// The executor role: `__executor --join TOKEN@ADDR --cores C --name N`.
fn executor(args: &[String]) -> anyhow::Result<()> {
    let value = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let (token, addr) = transport::parse_join(&value("--join").context("--join missing")?)?;
    let mut config = ExecutorConfig::new(addr, token);
    config.name = value("--name");
    if let Some(c) = value("--cores") {
        config.cores = c.parse()?;
    }
    // Die with the parent: its pipe on our stdin closes when it exits.
    std::thread::spawn(|| {
        let mut buf = [0u8; 16];
        while let Ok(n) = std::io::Read::read(&mut std::io::stdin(), &mut buf) {
            if n == 0 {
                break;
            }
        }
        std::process::exit(0);
    });
    tokio::runtime::Runtime::new()?.block_on(run_executor(config, registry()))?;
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("__executor") {
        return executor(&args[1..]);
    }
    let Some(dir) = args.first().cloned() else {
        bail!("usage: word_count DIR [--executors N] [--processes]");
    };
    let executors = args
        .iter()
        .position(|a| a == "--executors")
        .and_then(|i| args.get(i + 1))
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(2);
    let mut config = LocalConfig::in_process(executors);
    if args.iter().any(|a| a == "--processes") {
        config.mode = ExecutorMode::Processes {
            program: std::env::current_exe()?,
            args: vec!["__executor".into()],
        };
    }
    tokio::runtime::Runtime::new()?.block_on(async {
        let cluster = LocalCluster::start(config, registry()).await?;
        let driver = cluster.driver()?;
        let mut counts = driver
            .text_files(&dir, 2 * executors as u32)?
            .flat_map::<String>("words")?
            .map::<(String, u64)>("one")?
            .reduce_by_key("add", executors as u32)?
            .collect()
            .await?;
        counts.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        for (word, n) in counts.iter().take(20) {
            println!("{n:>8}  {word}");
        }
        println!("{} distinct words", counts.len());
        cluster.shutdown().await;
        Ok(())
    })
}
