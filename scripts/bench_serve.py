#!/usr/bin/env python
"""Benchmark the policy server on loopback against in-process predict().

Measures, in one run: p50/p99 latency of in-process predict (batch 1) and of a server round
trip with one client; throughput with 1 and 8 concurrent clients (requests batched by the
server); failed requests over a bounded load run. Writes benchmarks/results/serve.json.

  python scripts/bench_serve.py                      # small model config, 8 clients x 100 requests
  python scripts/bench_serve.py --checkpoint runs/latest --requests 500
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm


def obs(size: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    return {"agentview_rgb": rng.integers(0, 256, (size, size, 3), dtype=np.uint8),
            "eye_in_hand_rgb": rng.integers(0, 256, (size, size, 3), dtype=np.uint8),
            "joint_states": rng.normal(size=7).astype(np.float32), "gripper_states": rng.normal(size=2).astype(np.float32),
            "language": "put both the alphabet soup and the tomato sauce in the basket"}


def _start_server(policy, args):
    """The server in a thread of this process, or serve_policy.py in its own process."""
    from policy.serving import PolicyServer

    if args.in_thread:
        server = PolicyServer(policy, steps=args.steps, port=0)
        server.start_in_thread()
        return server, None
    ckpt = Path(tempfile.mkdtemp(prefix="bench_serve_")) / "policy"
    policy.save_pretrained(ckpt)
    proc = subprocess.Popen([sys.executable, str(Path(__file__).with_name("serve_policy.py")), "--checkpoint", str(ckpt),
                             "--port", "0", "--steps", str(args.steps), "--threads", str(args.threads), "--device", "cpu"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    for line in proc.stdout:
        if line.startswith("serving"):
            proc.port = int(line.split("ws://")[1].split(" ")[0].rsplit(":", 1)[1])
            return None, proc
    raise RuntimeError("serve_policy.py exited before it announced its port")


def pct(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs), q))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", default=None, help="pretrained policy (default: an untrained small-config policy; latency does not depend on weights)")
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--requests", type=int, default=100, help="requests per client in the load runs")
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--threads", type=int, default=1, help="torch threads (serve_policy.py defaults to 1)")
    p.add_argument("--in-thread", action="store_true",
                   help="run the server in this process (default: scripts/serve_policy.py in its own process, as deployed)")
    p.add_argument("--out", default="benchmarks/results/serve.json")
    args = p.parse_args(argv)

    import torch

    from policy.config import PolicyConfig
    from policy.policy import DiffusionPolicy
    from policy.serving import PolicyClient
    from policy.utils import atomic_write_json

    torch.set_num_threads(args.threads)
    if args.checkpoint:
        policy = DiffusionPolicy.from_pretrained(args.checkpoint)
        model = args.checkpoint
    else:
        from omegaconf import OmegaConf

        small = OmegaConf.to_container(OmegaConf.load(Path(__file__).resolve().parents[1] / "configs/model/small.yaml"))["model"]
        policy = DiffusionPolicy(PolicyConfig(**small))
        model = "configs/model/small.yaml (untrained)"
    size = policy.config.image_size
    batch1 = {k: (np.stack([v]) if isinstance(v, np.ndarray) else [v]) for k, v in obs(size, 0).items()}
    for _ in range(5):
        policy.predict(batch1, args.steps)

    n = max(50, args.requests)
    inproc = []
    for _ in tqdm(range(n), desc="in-process predict"):
        t0 = time.perf_counter()
        policy.predict(batch1, args.steps)
        inproc.append((time.perf_counter() - t0) * 1e3)

    server, proc = _start_server(policy, args)
    failed = 0
    lock = threading.Lock()

    def client_run(k: int, count: int, lat: list[float], bar: tqdm | None) -> None:
        nonlocal failed
        with PolicyClient("127.0.0.1", port) as client:
            for i in range(count):
                t0 = time.perf_counter()
                try:
                    reply = client.infer(obs(size, k * 100000 + i))
                    ok = reply["actions"].shape == (8, 7) and np.isfinite(reply["actions"]).all()
                except Exception:
                    ok = False
                lat.append((time.perf_counter() - t0) * 1e3)
                with lock:
                    failed += 0 if ok else 1
                    if bar is not None:
                        bar.update()

    port = server.port if server is not None else proc.port  # type: ignore[union-attr]
    one: list[float] = []
    with tqdm(total=n, desc="server, 1 client") as bar:
        t0 = time.perf_counter()
        client_run(0, n, one, bar)
        rps1 = n / (time.perf_counter() - t0)
    many: list[float] = []
    with tqdm(total=args.clients * args.requests, desc=f"server, {args.clients} clients") as bar:
        threads = [threading.Thread(target=client_run, args=(k + 1, args.requests, many, bar)) for k in range(args.clients)]
        t0 = time.perf_counter()
        [t.start() for t in threads]
        [t.join() for t in threads]
        rps8 = args.clients * args.requests / (time.perf_counter() - t0)
    server.stop() if server is not None else None
    if proc is not None:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)

    result = {
        "p50_ms": {"inproc": pct(inproc, 50), "server": pct(one, 50)},
        "p99_ms": {"inproc": pct(inproc, 99), "server": pct(one, 99)},
        "throughput_rps": {"1": rps1, str(args.clients): rps8},
        "failed_requests": failed,
        "server_overhead_p50_ms": pct(one, 50) - pct(inproc, 50),
        "throughput_ratio": rps8 / rps1,
        "p50_ms_8_clients": pct(many, 50),
        "requests": {"inproc": n, "one_client": n, "load": args.clients * args.requests},
        "server": "in-process thread" if args.in_thread else "separate process (scripts/serve_policy.py)",
        "steps": args.steps, "model": model, "image_size": size, "torch_threads": args.threads,
        "machine": f"{platform.node()}: {os.cpu_count()} CPU cores, {platform.machine()}, torch {torch.__version__}",
        "date": time.strftime("%Y-%m-%d"),
    }
    atomic_write_json(args.out, result)
    print(json.dumps({k: result[k] for k in ("p50_ms", "p99_ms", "throughput_rps", "failed_requests")}, indent=1))
    print(f"done: server overhead p50 {result['server_overhead_p50_ms']:.2f} ms, {args.clients}-client throughput "
          f"{result['throughput_ratio']:.1f}x one client, {failed} failed; written to {args.out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
