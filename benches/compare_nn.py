#!/usr/bin/env python3
"""Runs benches/nn (Rust) and benches/peers/torch_nn.py (PyTorch) interleaved in
one run, at 1 and 2 threads, and prints a markdown table of the side-by-side
figures and ratios (Kiln time / PyTorch time; below 1.0 means Kiln is faster).

    python3 benches/compare_nn.py [--python PATH] [--only gemm,conv,lenet,rss] [--json OUT]

PATH defaults to ~/.cache/kiln-anchors/venv/bin/python (see ../shared/anchors/setup.sh:
a venv with torch 2.15 CPU). The Rust side is built with `cargo bench --bench nn --no-run`.
"""
import argparse
import datetime
import json
import os
import platform
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PEAK_PER_CORE = 88.0  # GFLOP/s: what the best BLAS reaches per core on this machine (anchors README)


def rust_binary():
    out = subprocess.run(["cargo", "bench", "--bench", "nn", "--no-run", "--message-format=json"],
                         cwd=ROOT, capture_output=True, text=True, check=True).stdout
    exe = None
    for line in out.splitlines():
        try:
            m = json.loads(line)
        except ValueError:
            continue
        if m.get("reason") == "compiler-artifact" and m.get("target", {}).get("name") == "nn" and m.get("executable"):
            exe = m["executable"]
    if not exe:
        sys.exit("could not find the benches/nn executable")
    return exe


def run(cmd):
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if p.returncode != 0:
        print(p.stderr, file=sys.stderr)
    rows = []
    for line in p.stdout.splitlines():
        line = line.strip()
        if line.startswith("{"):
            rows.append(json.loads(line))
    return rows


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--python", default=os.path.expanduser("~/.cache/kiln-anchors/venv/bin/python"))
    ap.add_argument("--only", default="gemm,conv,lenet,rss")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--json")
    a = ap.parse_args()
    exe = rust_binary()
    peer = os.path.join(ROOT, "benches", "peers", "torch_nn.py")
    rows = []
    for what in a.only.split(","):
        for t in [int(x) for x in a.threads.split(",")]:
            if what == "rss" and t != 2:
                continue
            rows += run([exe, "--bench", "--threads", str(t), "--only", what])
            rows += run([a.python, peer, "--threads", str(t), "--only", what])
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1)
    date = datetime.date.today().isoformat()
    machine = f"{cpu_name()}, {os.cpu_count()} vCPU"
    print(f"Date {date}; machine: {machine}\n")
    print("| benchmark | threads | Kiln | PyTorch | ratio (Kiln time / PyTorch time) | max bg % |")
    print("|---|---|---|---|---|---|")

    def find(bench, impl_prefix, t, **kw):
        for r in rows:
            if r["bench"] == bench and r["impl"].startswith(impl_prefix) and r["threads"] == t and all(r.get(k) == v for k, v in kw.items()):
                return r
        return None

    for t in [int(x) for x in a.threads.split(",")]:
        for n in (256, 512, 1024, 2048):
            k, mm, p = find("sgemm", "kiln", t, n=n), find("sgemm", "matrixmultiply", t, n=n), find("sgemm", "torch", t, n=n)
            if k and p:
                share = k["gflops"] / (PEAK_PER_CORE * t) * 100
                extra = f"; matrixmultiply {mm['gflops']:.1f}" if mm else ""
                print(f"| sgemm n={n} (GFLOP/s; {share:.0f}% of {PEAK_PER_CORE * t:.0f} ceiling{extra}) | {t} | {k['gflops']:.1f} | {p['gflops']:.1f} | {p['gflops'] / k['gflops']:.2f} | {max(k['bg_pct'], p['bg_pct']):.0f} |")
        for case in ("lenet_conv1_1x6_5x5_28x28_b128", "lenet_conv2_6x16_5x5_12x12_b128", "conv3x3_64x64_75x75_b32"):
            k, p = find("conv2d", "kiln", t, case=case), find("conv2d", "torch", t, case=case)
            if k and p:
                print(f"| conv2d {case} fwd (ms) | {t} | {k['fwd_ms']:.2f} | {p['fwd_ms']:.2f} | {k['fwd_ms'] / p['fwd_ms']:.2f} | {max(k['bg_pct'], p['bg_pct']):.0f} |")
                print(f"| conv2d {case} fwd+bwd (ms) | {t} | {k['fwd_bwd_ms']:.2f} | {p['fwd_bwd_ms']:.2f} | {k['fwd_bwd_ms'] / p['fwd_bwd_ms']:.2f} | {max(k['bg_pct'], p['bg_pct']):.0f} |")
        k, p = find("lenet5", "kiln", t), find("lenet5", "torch", t)
        if k and p:
            print(f"| LeNet-5 train step b128 (ms) | {t} | {k['train_step_ms']:.2f} | {p['train_step_ms']:.2f} | {k['train_step_ms'] / p['train_step_ms']:.2f} | {max(k['bg_pct'], p['bg_pct']):.0f} |")
            print(f"| LeNet-5 inference b128 (ms) | {t} | {k['infer_ms']:.2f} | {p['infer_ms']:.2f} | {k['infer_ms'] / p['infer_ms']:.2f} | {max(k['bg_pct'], p['bg_pct']):.0f} |")
        k, p = find("lenet5_peak_rss", "kiln", t), find("lenet5_peak_rss", "torch", t)
        if k and p:
            print(f"| LeNet-5 200 training steps, peak RSS (MiB; torch after import: {p['rss_after_import_mib']:.0f}) | {t} | {k['peak_rss_mib']:.0f} | {p['peak_rss_mib']:.0f} | {k['peak_rss_mib'] / p['peak_rss_mib']:.2f} | - |")


if __name__ == "__main__":
    main()
