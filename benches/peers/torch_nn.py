"""PyTorch peer of benches/nn: the same measurements, printed as JSON lines.

Usage: python torch_nn.py --threads T --only gemm,conv,lenet,rss
Method as ../shared/anchors (gemm.py, conv_lenet.py): warm-up, about one second
of calls (at least 5 or 20), median; bg_pct is the share of the machine other
processes used during the loop (the loop is retried while it is above 10 %).
"""
import argparse
import json
import os
import resource
import time

RSS0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def machine_cpu():
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:9]]
    hz = os.sysconf("SC_CLK_TCK")
    return (sum(v) - v[3] - v[4]) / hz, sum(v) / hz


def own_cpu():
    a = resource.getrusage(resource.RUSAGE_SELF)
    return a.ru_utime + a.ru_stime


def time_it(fn, min_iters):
    for _ in range(3):
        fn()
    t0 = time.perf_counter()
    fn()
    one = max(time.perf_counter() - t0, 1e-7)
    iters = min(10000, max(min_iters, int(1.0 / one)))
    best = None
    for _ in range(4):
        b0, o0 = machine_cpu(), own_cpu()
        ts = []
        for _ in range(iters):
            t = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t)
        b1, o1 = machine_cpu(), own_cpu()
        bg = max(0.0, (b1[0] - b0[0]) - (o1 - o0)) / max(b1[1] - b0[1], 1e-9) * 100
        ts.sort()
        r = {"median_s": ts[len(ts) // 2], "min_s": ts[0], "iters": iters, "bg_pct": min(bg, 100.0)}
        if best is None or r["bg_pct"] < best["bg_pct"]:
            best = r
        if r["bg_pct"] <= 10:
            break
    return best


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--only", default="gemm,conv,lenet")
    a = ap.parse_args()
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    torch.set_num_threads(a.threads)
    torch.set_num_interop_threads(1)
    torch.manual_seed(0)
    t = a.threads
    for what in a.only.split(","):
        if what == "gemm":
            for n in (256, 512, 1024, 2048):
                x = torch.randn(n, n)
                y = torch.randn(n, n)
                r = time_it(lambda: torch.mm(x, y), 5)
                print(json.dumps({"bench": "sgemm", "impl": "torch.mm (MKL)", "threads": t, "n": n,
                                  "median_s": r["median_s"], "gflops": 2 * n ** 3 / r["median_s"] / 1e9,
                                  "bg_pct": round(r["bg_pct"], 1)}), flush=True)
        elif what == "conv":
            cases = [("lenet_conv1_1x6_5x5_28x28_b128", 1, 6, 5, 0, 128, 28),
                     ("lenet_conv2_6x16_5x5_12x12_b128", 6, 16, 5, 0, 128, 12),
                     ("conv3x3_64x64_75x75_b32", 64, 64, 3, 1, 32, 75)]
            for name, cin, cout, k, pad, b, hw in cases:
                conv = nn.Conv2d(cin, cout, k, padding=pad)
                x = torch.randn(b, cin, hw, hw, requires_grad=True)
                with torch.no_grad():
                    g = torch.randn_like(conv(x))

                def fwd():
                    with torch.no_grad():
                        conv(x)

                def fb():
                    conv.zero_grad(set_to_none=True)
                    x.grad = None
                    conv(x).backward(g)

                rf = time_it(fwd, 5)
                rb = time_it(fb, 5)
                print(json.dumps({"bench": "conv2d", "case": name, "impl": "torch", "threads": t,
                                  "fwd_ms": rf["median_s"] * 1e3, "fwd_bwd_ms": rb["median_s"] * 1e3,
                                  "bg_pct": round(max(rf["bg_pct"], rb["bg_pct"]), 1)}), flush=True)
        elif what in ("lenet", "rss"):
            class LeNet5(nn.Module):
                def __init__(self):
                    super().__init__()
                    self.c1 = nn.Conv2d(1, 6, 5)
                    self.c2 = nn.Conv2d(6, 16, 5)
                    self.f1 = nn.Linear(256, 120)
                    self.f2 = nn.Linear(120, 84)
                    self.f3 = nn.Linear(84, 10)

                def forward(self, x):
                    x = F.max_pool2d(torch.tanh(self.c1(x)), 2)
                    x = F.max_pool2d(torch.tanh(self.c2(x)), 2)
                    x = torch.tanh(self.f1(x.flatten(1)))
                    x = torch.tanh(self.f2(x))
                    return F.log_softmax(self.f3(x), dim=1)

            model = LeNet5()
            opt = torch.optim.SGD(model.parameters(), lr=0.01)
            x = torch.randn(128, 1, 28, 28)
            y = torch.randint(0, 10, (128,))

            def step():
                opt.zero_grad(set_to_none=True)
                loss = F.nll_loss(model(x), y)
                loss.backward()
                opt.step()
                return loss

            if what == "lenet":
                tr = time_it(step, 20)

                def infer():
                    with torch.no_grad():
                        model(x)

                inf = time_it(infer, 20)
                print(json.dumps({"bench": "lenet5", "impl": "torch", "threads": t,
                                  "train_step_ms": tr["median_s"] * 1e3, "train_samples_per_s": 128 / tr["median_s"],
                                  "infer_ms": inf["median_s"] * 1e3, "infer_samples_per_s": 128 / inf["median_s"],
                                  "bg_pct": round(max(tr["bg_pct"], inf["bg_pct"]), 1)}), flush=True)
            else:
                rss_import = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
                for _ in range(200):
                    last = step()
                print(json.dumps({"bench": "lenet5_peak_rss", "impl": "torch", "threads": t, "steps": 200,
                                  "final_loss": float(last), "rss_at_start_mib": RSS0,
                                  "rss_after_import_mib": rss_import,
                                  "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0}),
                      flush=True)


if __name__ == "__main__":
    main()
