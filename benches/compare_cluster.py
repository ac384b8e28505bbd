#!/usr/bin/env python3
"""Runs the kiln-runtime cluster benchmark (runtime/benches/cluster.rs) and its
peers, Ray (../shared/anchors/ray_actor.py) and PySpark local[2]
(../shared/anchors/spark_rdd.py), one after the other in one run, and prints a
markdown table of the side-by-side figures and ratios.

    python3 benches/compare_cluster.py [--python PATH] [--anchors DIR] [--json OUT]

PATH defaults to ~/.cache/kiln-anchors/venv/bin/python (../shared/anchors/setup.sh
makes it: ray 2.60, pyspark 4.3, needs java); DIR defaults to ../shared/anchors.
The Rust side is built with `cargo bench -p kiln-runtime --bench cluster --no-run`.
Targets (issue 3): RTT p50 under 100 us and at least 10x lower than Ray's; at
least 20x PySpark's throughput on both dataset jobs.
"""
import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def rust_binary():
    out = subprocess.run(
        ["cargo", "bench", "-p", "kiln-runtime", "--bench", "cluster", "--no-run",
         "--message-format=json"],
        cwd=ROOT, capture_output=True, text=True, check=True).stdout
    exe = None
    for line in out.splitlines():
        try:
            m = json.loads(line)
        except ValueError:
            continue
        if (m.get("reason") == "compiler-artifact"
                and m.get("target", {}).get("name") == "cluster" and m.get("executable")):
            exe = m["executable"]
    if not exe:
        sys.exit("could not find the runtime cluster bench executable")
    return exe


def kiln_figures(exe):
    """Parses `name  key=value ...` / `name  value` lines of the Rust bench."""
    p = subprocess.run([exe, "--bench"], cwd=ROOT, capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit("kiln bench failed:\n" + p.stderr[-4000:])
    figs = {}
    for line in p.stdout.splitlines():
        parts = line.split()
        if len(parts) < 2:
            continue
        name, rest = parts[0], parts[1:]
        if len(rest) == 1 and "=" not in rest[0]:
            figs[name] = float(rest[0])
            continue
        kv = dict(x.split("=", 1) for x in rest if "=" in x)
        if "run" in kv:
            figs.setdefault(name, []).append(float(kv["s"]))
        else:
            figs[name] = {k: float(v) for k, v in kv.items()}
    return figs


def peer(python, script):
    p = subprocess.run([python, script], capture_output=True, text=True)
    for line in p.stdout.splitlines():
        if line.strip().startswith("{"):
            return json.loads(line)
    sys.exit(f"{script} printed no JSON line:\n{p.stderr[-4000:]}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--python", default=os.path.expanduser("~/.cache/kiln-anchors/venv/bin/python"))
    ap.add_argument("--anchors", default=os.path.join(ROOT, "..", "shared", "anchors"))
    ap.add_argument("--json", help="also write the raw figures here")
    a = ap.parse_args()

    exe = rust_binary()
    started = datetime.datetime.now(datetime.timezone.utc)
    kiln = kiln_figures(exe)
    ray = peer(a.python, os.path.join(a.anchors, "ray_actor.py"))
    spark = peer(a.python, os.path.join(a.anchors, "spark_rdd.py"))
    ended = datetime.datetime.now(datetime.timezone.utc)

    rtt = kiln["quic_rtt_small"]
    mf = statistics.median(kiln["map_filter_count_10M"])
    rbk = statistics.median(kiln["reduce_by_key_1M"])
    rows = [
        ("small-message round trip p50 (us)", rtt["p50_us"], ray["rtt"]["median_us"],
         ray["rtt"]["median_us"] / rtt["p50_us"], "< 100 us and >= 10x lower"),
        ("small-message round trip p99 (us)", rtt["p99_us"], ray["rtt"]["p99_us"],
         ray["rtt"]["p99_us"] / rtt["p99_us"], ""),
        ("sequential messages/s", rtt["msgs_per_s"], ray["rtt"]["calls_per_s_sequential"],
         rtt["msgs_per_s"] / ray["rtt"]["calls_per_s_sequential"], ""),
        ("map/filter/count 10M, 2 executors vs local[2] (s, median of 3)", mf,
         spark["map_filter_count_10M"]["median_s"],
         spark["map_filter_count_10M"]["median_s"] / mf, ">= 20x"),
        ("reduce_by_key 1M pairs, 1000 keys (s, median of 3)", rbk,
         spark["reduce_by_key_1M"]["median_s"], spark["reduce_by_key_1M"]["median_s"] / rbk,
         ">= 20x"),
    ]
    print(f"Run {started:%Y-%m-%d %H:%M}-{ended:%H:%M} UTC on {platform.node()} "
          f"({os.cpu_count()} CPUs); Ray {ray.get('ray_version')}, Spark {spark.get('spark_version')}; "
          f"peer background load: Ray {ray.get('bg_pct_calls')} %, Spark {spark.get('bg_pct_jobs')} %")
    print()
    print("| figure | Kiln | peer | Kiln advantage (x) | target |")
    print("|---|---|---|---|---|")
    for name, k, p, ratio, target in rows:
        print(f"| {name} | {k:,.3g} | {p:,.3g} | {ratio:.1f} | {target} |")
    if "tasks_per_s" in kiln:
        print(f"| tasks scheduled and completed per second (QUIC) | {kiln['tasks_per_s']:,.0f} | — | — | |")
    if "tasks_per_s_mem" in kiln:
        print(f"| tasks per second, in-memory local path | {kiln['tasks_per_s_mem']:,.0f} | — | — | |")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"kiln": kiln, "ray": ray, "spark": spark}, f, indent=1)


if __name__ == "__main__":
    main()
