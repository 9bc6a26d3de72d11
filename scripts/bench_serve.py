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
import multiprocessing as mp
import os
import platform
import signal
import subprocess
import sys
import tempfile
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
    from policy.serving.server import PolicyServer

    if args.in_thread:
        server = PolicyServer(policy, steps=args.steps, port=0, batch_window_ms=args.batch_window_ms)
        server.start_in_thread()
        return server, None
    ckpt = Path(tempfile.mkdtemp(prefix="bench_serve_")) / "policy"
    policy.save_pretrained(ckpt)
    proc = subprocess.Popen([sys.executable, str(Path(__file__).with_name("serve_policy.py")), "--checkpoint", str(ckpt),
                             "--port", "0", "--steps", str(args.steps), "--threads", str(args.threads), "--device", "cpu",
                             "--batch-window-ms", str(args.batch_window_ms)],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    for line in proc.stdout:
        if line.startswith("serving"):
            proc.port = int(line.split("ws://")[1].split(" ")[0].rsplit(":", 1)[1])
            return None, proc
    raise RuntimeError("serve_policy.py exited before it announced its port")


def pct(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs), q))


def load_run(port: int, clients: int, count: int, size: int) -> tuple[float, list[float], list[int], int]:
    """`clients` client processes (as separate robot controllers would be) in closed loop.

    Returns (requests per second from the first request to the last reply, latencies, batch sizes, failures).
    """
    ctx = mp.get_context("spawn")
    results, go = ctx.Queue(), ctx.Event()
    procs = [ctx.Process(target=_gated_client, args=(go, port, k, count, size, results), daemon=True) for k in range(clients)]
    [q.start() for q in procs]
    ready = [results.get(timeout=120) for _ in procs]  # each has connected and made its observations
    assert all(r == "ready" for r in ready)
    t0 = time.perf_counter()
    go.set()
    out = [results.get(timeout=600) for _ in procs]
    elapsed = time.perf_counter() - t0
    [q.join(30) for q in procs]
    lat = [x for o in out for x in o[0]]
    batch = [x for o in out for x in o[1]]
    return clients * count / elapsed, lat, batch, sum(o[2] for o in out)


def _gated_client(go, port: int, k: int, count: int, size: int, results) -> None:
    """A client that connects and prepares, reports ready, then starts on the common signal."""

    from policy.serving.client import PolicyClient

    observations = [obs(size, k * 100000 + i) for i in range(count)]
    lat, batch, failed = [], [], 0
    with PolicyClient("127.0.0.1", port) as client:
        client.infer(observations[0])  # connection warm-up, not timed
        results.put("ready")
        go.wait()
        for o in observations:
            ms, timing = timed_request(client, o)
            lat.append(ms)
            if timing is None:
                failed += 1
            else:
                batch.append(timing["batch_size"])
    results.put((lat, batch, failed))


def timed_request(client, observation: dict) -> tuple[float, dict | None]:
    """One round trip: (milliseconds, the reply's server_timing, or None if the reply was bad or an error)."""
    t0 = time.perf_counter()
    try:
        reply = client.infer(observation)
        ok = reply["actions"].shape == (8, 7) and np.isfinite(reply["actions"]).all()
        timing = reply["server_timing"] if ok else None
    except Exception:
        timing = None
    return (time.perf_counter() - t0) * 1e3, timing


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", default=None, help="pretrained policy (default: an untrained small-config policy; latency does not depend on weights)")
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--requests", type=int, default=500, help="requests per client in the load runs")
    p.add_argument("--latency-requests", type=int, default=200, help="paired in-process / server requests for the latency numbers")
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--threads", type=int, default=1, help="torch threads (serve_policy.py defaults to 1)")
    p.add_argument("--batch-window-ms", type=float, default=5.0, help="the server's batching window (serve_policy.py's default)")
    p.add_argument("--in-thread", action="store_true",
                   help="run the server in this process (default: scripts/serve_policy.py in its own process, as deployed)")
    p.add_argument("--out", default="benchmarks/results/serve.json")
    args = p.parse_args(argv)

    import torch

    from policy.model.config import PolicyConfig
    from policy.model.policy import DiffusionPolicy
    from policy.serving.client import PolicyClient
    from policy.serving.wire import stack_observations
    from policy.utils import atomic_write_json

    torch.set_num_threads(args.threads)
    if args.checkpoint:
        policy = DiffusionPolicy.from_pretrained(args.checkpoint)
        model = args.checkpoint
    else:
        from omegaconf import OmegaConf

        from policy.training.config import CONFIG_DIR

        small = OmegaConf.to_container(OmegaConf.load(CONFIG_DIR / "model" / "small.yaml"))["model"]
        policy = DiffusionPolicy(PolicyConfig(**small))
        model = "configs/model/small.yaml (untrained)"
    size = policy.config.image_size
    server, proc = _start_server(policy, args)
    port = server.port if server is not None else proc.port  # type: ignore[union-attr]
    failed = 0
    try:
        # Latency: in-process predict() and a server round trip, alternated request by request so
        # that both see the same machine (this box drifts by several ms over a minute).
        n = max(50, args.latency_requests)
        observations = [obs(size, i) for i in range(n)]
        inproc, one, server_ms = [], [], []
        with PolicyClient("127.0.0.1", port) as client:
            for o in observations[:5]:
                policy.predict(stack_observations([o]), args.steps)
                client.infer(o)
            for o in tqdm(observations, desc="latency: in-process and server, alternated"):
                batch1 = stack_observations([o])  # the batch the server builds from this request
                t0 = time.perf_counter()
                policy.predict(batch1, args.steps)
                inproc.append((time.perf_counter() - t0) * 1e3)
                ms, timing = timed_request(client, o)
                one.append(ms)
                if timing is None:
                    failed += 1
                else:
                    server_ms.append(timing["infer_ms"])
        # Throughput: closed-loop client processes, 1 and then `clients` of them.
        print(f"load: 1 client x {args.requests}, then {args.clients} clients x {args.requests} requests", flush=True)
        rps1, lat1, _, f1 = load_run(port, 1, args.requests, size)
        rpsn, latn, batches, fn = load_run(port, args.clients, args.requests, size)
        failed += f1 + fn
    finally:
        server.stop() if server is not None else None
        if proc is not None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)

    paired = np.asarray(one) - np.asarray(inproc)
    result = {
        "p50_ms": {"inproc": pct(inproc, 50), "server": pct(one, 50)},
        "p99_ms": {"inproc": pct(inproc, 99), "server": pct(one, 99)},
        "throughput_rps": {"1": rps1, str(args.clients): rpsn},
        "failed_requests": failed,
        "server_overhead_p50_ms": pct(one, 50) - pct(inproc, 50),
        "paired_overhead_p50_ms": float(np.median(paired)),
        "server_infer_p50_ms": pct(server_ms, 50),
        "throughput_ratio": rpsn / rps1,
        "p50_ms_load": {"1": pct(lat1, 50), str(args.clients): pct(latn, 50)},
        "mean_batch_size_load": float(np.mean(batches)),
        "requests": {"latency_pairs": n, "load_1": args.requests, "load": args.clients * args.requests},
        "server": "in-process thread" if args.in_thread else "separate process (scripts/serve_policy.py)",
        "clients": "latency: this process; load: one process per client (spawned)",
        "batch_window_ms": args.batch_window_ms,
        "steps": args.steps, "model": model, "image_size": size, "torch_threads": args.threads,
        "machine": f"{platform.node()}: {os.cpu_count()} CPU cores, {platform.machine()}, torch {torch.__version__}",
        "date": time.strftime("%Y-%m-%d"),
    }
    atomic_write_json(args.out, result)
    print(json.dumps({k: result[k] for k in ("p50_ms", "p99_ms", "throughput_rps", "failed_requests")}, indent=1))
    print(f"done: server overhead p50 {result['server_overhead_p50_ms']:.2f} ms (paired median "
          f"{result['paired_overhead_p50_ms']:.2f} ms), {args.clients}-client throughput {result['throughput_ratio']:.1f}x "
          f"one client (mean batch {result['mean_batch_size_load']:.1f}), {failed} failed; written to {args.out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
