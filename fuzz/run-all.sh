#!/bin/bash
# Runs every fuzz target (or those in $TARGETS) for $1 seconds each on the
# prebuilt binaries (`cargo +nightly fuzz build -O` first), printing the
# executions and coverage of each; logs in /tmp/fuzz-<target>.log.
set -u
cd "$(dirname "$0")"
secs=${1:-45}
bin=target/x86_64-unknown-linux-gnu/release
mkdir -p artifacts
for t in ${TARGETS:-$(ls fuzz_targets | sed 's/.rs$//')}; do
  echo "=== $t"
  mkdir -p artifacts/$t
  timeout $((secs+30)) $bin/$t corpus/$t -max_total_time=$secs -rss_limit_mb=4096 -timeout=10 -print_final_stats=1 -artifact_prefix=artifacts/$t/ > /tmp/fuzz-$t.log 2>&1
  echo "rc=$?"
  grep -E "stat::number_of_executed_units|Done [0-9]+ runs|SUMMARY|panicked at" /tmp/fuzz-$t.log | tail -3
  grep -E "^#[0-9]+" /tmp/fuzz-$t.log | tail -1
done
echo ALLDONE
