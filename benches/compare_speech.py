#!/usr/bin/env python3
"""Runs benches/speech (Rust) and benches/peers/torch_speech.py (PyTorch) interleaved
in one run and prints a markdown table of the side-by-side figures and ratios
(Kiln time / PyTorch time; below 1.0 means Kiln is faster).

    python3 benches/compare_speech.py [--python PATH] [--only ds2,ctc,layers]
                                      [--threads 2] [--rounds 1] [--tries 2] [--json OUT]

PATH defaults to ~/.cache/kiln-anchors/venv/bin/python (see ../shared/anchors/setup.sh:
a venv with torch 2.15 CPU). The Rust side is built with `cargo bench --bench speech
--no-run`. With --rounds R each benchmark runs R times per side, alternating
(kiln, torch, kiln, torch, ...), and the table keeps each side's fastest round.
Shapes: ../shared/anchors/ds2_step.py (GRU variant) and ctc.py.
"""
import argparse
import datetime
import json
import os
import subprocess
import sys

from compare_nn import cpu_name, run

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def rust_binary(name="speech"):
    """Builds the bench target `name` (release) and returns its executable."""
    out = subprocess.run(["cargo", "bench", "--bench", name, "--no-run", "--message-format=json"],
                         cwd=ROOT, capture_output=True, text=True, check=True).stdout
    exe = None
    for line in out.splitlines():
        try:
            m = json.loads(line)
        except ValueError:
            continue
        if m.get("reason") == "compiler-artifact" and m.get("target", {}).get("name") == name and m.get("executable"):
            exe = m["executable"]
    if not exe:
        sys.exit(f"could not find the benches/{name} executable")
    return exe


def best(rows, bench, impl_prefix, t, key, **kw):
    """The row with the smallest `key` among the matching rounds."""
    m = [r for r in rows if r["bench"] == bench and r["impl"].startswith(impl_prefix) and r["threads"] == t
         and all(r.get(k) == v for k, v in kw.items())]
    return min(m, key=lambda r: r[key]) if m else None


def line(name, t, k, p, key, scale=1.0, fmt="{:.2f}"):
    if not (k and p):
        return
    kv, pv = k[key] * scale, p[key] * scale
    bg = max(k["bg_pct"], p["bg_pct"])
    print(f"| {name} | {t} | {fmt.format(kv)} | {fmt.format(pv)} | {kv / pv:.2f} | {bg:.0f} |")


def compare(bench, peer, default_only):
    """Parses the common options, builds benches/`bench`, runs it and benches/peers/`peer`
    interleaved (per benchmark, thread count and round), writes --json, prints the header
    of the table and returns (thread counts, rows)."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--python", default=os.path.expanduser("~/.cache/kiln-anchors/venv/bin/python"))
    ap.add_argument("--only", default=default_only)
    ap.add_argument("--threads", default="2")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--tries", default="2")
    ap.add_argument("--json")
    a = ap.parse_args()
    exe = rust_binary(bench)
    peer = os.path.join(ROOT, "benches", "peers", peer)
    threads = [int(x) for x in a.threads.split(",")]
    rows = []
    for what in a.only.split(","):
        for t in threads:
            for _ in range(a.rounds):
                rows += run([exe, "--bench", "--threads", str(t), "--tries", a.tries, "--only", what])
                rows += run([a.python, peer, "--threads", str(t), "--tries", a.tries, "--only", what])
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1)
    date = datetime.datetime.now(datetime.timezone.utc).date().isoformat()
    print(f"Date {date}; machine: {cpu_name()}, {os.cpu_count()} vCPU\n")
    print("| benchmark | threads | Kiln | PyTorch | ratio (Kiln time / PyTorch time) | max bg % |")
    print("|---|---|---|---|---|---|")
    return threads, rows


def main():
    threads, rows = compare("speech", "torch_speech.py", "ds2,ctc,layers")
    for t in threads:
        k, p = best(rows, "ds2_gru", "kiln", t, "train_step_s"), best(rows, "ds2_gru", "torch", t, "train_step_s")
        line("DS2 GRU b8 x 2 s train step: fwd+bwd+clip+SGD (s)", t, k, p, "train_step_s", fmt="{:.3f}")
        k, p = best(rows, "ds2_gru", "kiln", t, "infer_s"), best(rows, "ds2_gru", "torch", t, "infer_s")
        line("DS2 GRU b8 x 2 s inference, eval mode (s)", t, k, p, "infer_s", fmt="{:.3f}")
        for T in (200, 100):
            for key, what in (("fwd_bwd_ms", "fwd+bwd"), ("with_log_softmax_ms", "log_softmax+fwd+bwd"),
                              ("fwd_ms", "fwd")):
                k, p = best(rows, "ctc", "kiln", t, key, T=T), best(rows, "ctc", "torch", t, key, T=T)
                line(f"CTC T={T} N=8 C=29 L=30 {what} (ms)", t, k, p, key)
        for name in ("conv1", "conv2", "bigru_1312_256", "bigru_256_256"):
            for key, what in (("fwd_ms", "fwd"), ("fwd_bwd_ms", "fwd+bwd")):
                k, p = best(rows, "ds2_layer", "kiln", t, key, layer=name), best(rows, "ds2_layer", "torch", t, key, layer=name)
                line(f"DS2 layer {name} {what} (ms)", t, k, p, key, fmt="{:.1f}")
    for r in rows:
        if r["bench"] == "ds2_gru":
            print(f"\n{r['impl']} ({r['threads']} thr): {r['params']} params, loss {r['first_loss']:.3f} -> {r['last_loss']:.3f}")


if __name__ == "__main__":
    main()
