#!/usr/bin/env python3
"""Runs benches/detection (Rust) and benches/peers/torch_ssd.py (PyTorch) interleaved
in one run and prints a markdown table of the side-by-side figures and ratios
(Kiln time / PyTorch time; below 1.0 means Kiln is faster; target at most 1.0).

    python3 benches/compare_detection.py [--python PATH] [--only ssd300,small]
                                         [--threads 2] [--rounds 1] [--tries 2] [--json OUT]

PATH defaults to ~/.cache/kiln-anchors/venv/bin/python (see ../shared/anchors/setup.sh:
a venv with torch 2.15 CPU). The Rust side is built with `cargo bench --bench detection
--no-run`. With --rounds R each benchmark runs R times per side, alternating, and the
table keeps each side's fastest round. Shapes: SSD300-VGG16 (VOC, 21 classes) inference
without NMS at batch 1 and 8, and ../shared/anchors/ssd_step.py (small SSD, batch 8).
"""
from compare_speech import best, compare, line


def main():
    threads, rows = compare("detection", "torch_ssd.py", "ssd300,small")
    for t in threads:
        for b in (1, 8):
            k, p = best(rows, "ssd300", "kiln", t, "infer_s", batch=b), best(rows, "ssd300", "torch", t, "infer_s", batch=b)
            line(f"SSD300-VGG16 b{b} inference, fwd+softmax, no NMS (s/batch)", t, k, p, "infer_s", fmt="{:.3f}")
            if k and p:
                print(f"| SSD300-VGG16 b{b} inference (images/s; ratio = PyTorch/Kiln images/s) | {t} "
                      f"| {k['images_per_s']:.2f} | {p['images_per_s']:.2f} | {p['images_per_s'] / k['images_per_s']:.2f} "
                      f"| {max(k['bg_pct'], p['bg_pct']):.0f} |")
        k, p = best(rows, "ssd_small", "kiln", t, "train_step_s"), best(rows, "ssd_small", "torch", t, "train_step_s")
        line("small SSD b8 train step: match+fwd+MultiBox+bwd+SGD (s)", t, k, p, "train_step_s", fmt="{:.3f}")
        k, p = best(rows, "ssd_small", "kiln", t, "infer_s"), best(rows, "ssd_small", "torch", t, "infer_s")
        line("small SSD b8 inference, fwd+softmax, no NMS (s)", t, k, p, "infer_s", fmt="{:.3f}")
        k, p = best(rows, "ssd_small", "kiln", t, "matching_ms"), best(rows, "ssd_small", "torch", t, "matching_ms")
        line("small SSD matching + encoding, 8 images (ms)", t, k, p, "matching_ms")
    print()
    for r in rows:
        if r["bench"] == "ssd300" and r["batch"] == 1:
            print(f"{r['impl']} ({r['threads']} thr): SSD300 {r['params']} params, {r['priors']} priors")
        if r["bench"] == "ssd_small":
            print(f"{r['impl']} ({r['threads']} thr): small SSD {r['params']} params, {r['priors']} priors, "
                  f"loss {r['first_loss']:.3f} -> {r['last_loss']:.3f}")


if __name__ == "__main__":
    main()
