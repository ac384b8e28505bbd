"""Peer for benches/cluster_train.rs: torch.distributed gloo all_reduce (SUM,
float32) between 2 processes on 127.0.0.1, 1 intra-op thread each, for the
sizes (MiB) given as arguments. Method as ../shared/anchors/allreduce.py:
warm up, median of back-to-back calls on rank 0. One JSON line per size.

    ~/.cache/kiln-anchors/venv/bin/python benches/peers/gloo_allreduce.py 4 64 256
"""
import json
import os
import socket
import statistics
import sys
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

MiB = 1 << 20


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def worker(rank, world, port, sizes, q):
    torch.set_num_threads(1)
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    dist.init_process_group("gloo", rank=rank, world_size=world)
    out = []
    for mb in sizes:
        n = mb * MiB // 4
        t = torch.ones(n, dtype=torch.float32)
        iters = 20 if mb <= 4 else (6 if mb <= 64 else 3)
        for _ in range(2):
            dist.all_reduce(t)
        dist.barrier()
        ts = []
        for _ in range(iters):
            t0 = time.perf_counter()
            dist.all_reduce(t)
            ts.append(time.perf_counter() - t0)
        med = statistics.median(ts)
        out.append({"bench": "gloo_allreduce", "mb": mb, "ranks": world,
                    "seconds": round(med, 5), "algbw_gb_s": round(n * 4 / med / 1e9, 3)})
    dist.barrier()
    if rank == 0:
        q.put(out)
    dist.destroy_process_group()


def main():
    sizes = [int(a) for a in sys.argv[1:]] or [4, 64, 256]
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=worker, args=(r, 2, port, sizes, q)) for r in range(2)]
    for p in procs:
        p.start()
    res = q.get(timeout=600)
    for p in procs:
        p.join()
    for r in res:
        print(json.dumps(r), flush=True)


if __name__ == "__main__":
    main()
