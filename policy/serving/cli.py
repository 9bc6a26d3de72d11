"""Serve a trained policy to robot controllers over openpi-client's websocket protocol.

  python scripts/serve_policy.py                       # runs/latest on 127.0.0.1:8000
  python scripts/serve_policy.py --checkpoint DIR --steps 2 --host 0.0.0.0 --api-key KEY

Clients: openpi_client.WebsocketClientPolicy or policy.serving.client.PolicyClient.
Health check: GET http://HOST:PORT/healthz (503 while the model loads and warms up, then 200).
Stop with Ctrl-C or SIGTERM. Memory for client frames is bounded by --max-connections x
6 x --max-message-mb (see docs/serving.md).
"""

from __future__ import annotations

import argparse
import glob
import json
import logging
import os
import sys
from pathlib import Path

import numpy as np

DEFAULT_CHECKPOINT = "runs/latest"


def best_evaluated_steps(checkpoint: Path) -> int | None:
    """Steps with the highest success in an eval sweep of this checkpoint, if any.

    Reads steps_sweep.json ({"<steps>": {"<suite>": median success over tasks}}) written by
    `scripts/eval_rollouts.py --steps 1,2,4,...` under eval/<run name>/ (its default --out)
    or anywhere under the checkpoint folder; ties go to fewer steps.
    """
    resolved = checkpoint.resolve()
    name = resolved.parent.name if resolved.name == "policy" else resolved.name
    best: tuple[float, int] | None = None
    for path in glob.glob(f"eval/{glob.escape(name)}*/steps_sweep.json") + glob.glob(f"{glob.escape(str(checkpoint))}/**/steps_sweep.json", recursive=True):
        try:
            sweep = json.loads(Path(path).read_text())
            for steps, per_suite in sweep.items():
                score = float(np.mean(list(per_suite.values())))
                if best is None or (score, -int(steps)) > (best[0], -best[1]):
                    best = (score, int(steps))
        except (OSError, ValueError, TypeError, AttributeError):
            continue
    return None if best is None else best[1]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default=DEFAULT_CHECKPOINT, help="pretrained policy dir or training run dir (default: runs/latest)")
    p.add_argument("--steps", type=int, default=None, help="sampling steps (default: the best evaluated, else 2)")
    p.add_argument("--churn", type=float, default=0.0, help="sampler churn in [0, 1] (default 0: DDIM)")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1; 0.0.0.0 exposes it on the network)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 picks a free one)")
    p.add_argument("--api-key", default=os.environ.get("DDL_API_KEY"), help="require 'Authorization: Api-Key KEY' (default: $DDL_API_KEY)")
    p.add_argument("--max-message-mb", type=float, default=4.0, help="largest accepted request (default 4 MB)")
    p.add_argument("--max-connections", type=int, default=16,
                   help="most clients connected at once; more are refused with HTTP 503 (default 16)")
    p.add_argument("--max-cached-prompts", type=int, default=1024,
                   help="language embeddings kept for prompts not in the checkpoint's cache (LRU; default 1024)")
    p.add_argument("--max-batch", type=int, default=32, help="most requests batched into one forward pass")
    p.add_argument("--batch-window-ms", type=float, default=5.0,
                   help="how long a queued request may wait for requests of the other active clients (0: never)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1: measured fastest for serving on a 2-core CPU)")
    p.add_argument("--device", default="auto", help="torch device (default: cuda if available, else cpu)")
    return p.parse_args(argv)


def _cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    ckpt = Path(args.checkpoint)
    if not ckpt.exists():
        hint = "train one with `python scripts/train_policy.py suite=libero_10`" if args.checkpoint == DEFAULT_CHECKPOINT else "check the path"
        print(f"error: no checkpoint at {ckpt}; {hint}, or pass --checkpoint DIR", file=sys.stderr)
        return 2
    if not 0.0 <= args.churn <= 1.0 or (args.steps is not None and args.steps < 1):
        print("error: --steps must be >= 1 and --churn in [0, 1]", file=sys.stderr)
        return 2
    if args.max_connections < 1 or args.max_cached_prompts < 0 or args.max_message_mb * 1024 * 1024 < 1024:
        print("error: --max-connections must be >= 1, --max-cached-prompts >= 0 and --max-message-mb >= 0.001", file=sys.stderr)
        return 2
    steps = args.steps or best_evaluated_steps(ckpt) or 2
    device = args.device if args.device != "auto" else ("cuda" if _cuda() else "cpu")

    import torch

    from policy.model.policy import DiffusionPolicy
    from policy.serving.server import PolicyServer, worst_case_connection_bytes

    torch.set_num_threads(max(1, args.threads))

    try:
        policy = DiffusionPolicy.from_pretrained(ckpt, device=device)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    meta = {"checkpoint": str(ckpt.resolve()), "image_size": policy.config.render_resolution, "suites": list(policy.config.suites),
            "model": policy.config.to_dict()}
    server = PolicyServer(policy, steps=steps, churn=args.churn, host=args.host, port=args.port, api_key=args.api_key,
                          max_message_bytes=int(args.max_message_mb * 1024 * 1024), max_batch=args.max_batch,
                          batch_window_ms=args.batch_window_ms, metadata=meta, max_connections=args.max_connections,
                          max_cached_prompts=args.max_cached_prompts)
    import asyncio
    import threading

    def announce() -> None:
        server.ready.wait()
        print(f"serving {ckpt} on ws://{args.host}:{server.port} (steps={steps}, churn={args.churn}, "
              f"api key {'required' if args.api_key else 'off'}, at most {args.max_connections} connections, client frames "
              f"<= {args.max_connections * worst_case_connection_bytes(server.max_message_bytes) / 2**20:.0f} MiB); "
              "Ctrl-C to stop", flush=True)

    threading.Thread(target=announce, daemon=True).start()
    try:
        asyncio.run(server.serve(install_signal_handlers=True))
    except OSError as e:
        print(f"error: cannot listen on {args.host}:{args.port}: {e.strerror or e}", file=sys.stderr)
        return 1
    print(f"stopped: {server.stats['requests']} requests answered, {server.stats['errors']} bad requests, "
          f"{server.stats['batches']} batches", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
