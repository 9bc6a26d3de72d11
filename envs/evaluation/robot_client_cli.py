"""A robot controller loop driven by the policy server; the LIBERO simulator plays the robot.

Start a server first (`python scripts/serve_policy.py`), then:

  python scripts/robot_client_example.py --suite libero_object --task 0 --episodes 2

Each episode starts from official init state i, waits 10 no-op steps, then asks the server
for action chunks through ActionChunker (one action per 20 Hz tick, next chunk requested
early). Observations are sent with openpi's LIBERO keys (--package-keys for ours).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
from tqdm import tqdm

from policy.features import LEGACY_FEATURES

NOOP = np.array([0, 0, 0, 0, 0, 0, -1], dtype=np.float32)


def to_request(obs: dict, openpi_keys: bool, keys: list[str] | None = None,
               state: list[str] | None = None) -> dict:
    """Policy observation of envs.libero.env -> one server request. ``keys``: the package keys
    the server's metadata lists; ``state``: its proprio features, concatenated into openpi's
    ``observation/state`` (defaults: the joints-layout image policy's)."""
    if not openpi_keys:
        return {k: obs[k] for k in (keys or LEGACY_FEATURES.observation_keys)}
    state = state or [f.name for f in LEGACY_FEATURES.states]
    return {"observation/image": obs["agentview_rgb"], "observation/wrist_image": obs["eye_in_hand_rgb"],
            "observation/state": np.concatenate([obs[k] for k in state]).astype(np.float32),
            "prompt": obs["language"]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-key", default=os.environ.get("DDL_API_KEY"))
    p.add_argument("--suite", default="libero_object")
    p.add_argument("--task", type=int, default=0)
    p.add_argument("--episodes", type=int, default=2)
    p.add_argument("--max-steps", type=int, default=None, help="policy steps per episode (default: the suite's)")
    p.add_argument("--execute", type=int, default=8, help="actions executed per chunk")
    p.add_argument("--realtime", action="store_true", help="pace the loop at 20 Hz like a real controller")
    p.add_argument("--package-keys", action="store_true", help="send the package's observation keys instead of openpi's")
    args = p.parse_args(argv)

    from envs.libero.suites import MAX_STEPS, NUM_WAIT_STEPS, get_init_states, get_task
    from envs.libero.env import make_env
    from policy.serving.client import ActionChunker, PolicyClient

    try:
        task = get_task(args.suite, args.task)
        client = PolicyClient(args.host, args.port, api_key=args.api_key, connect_timeout=10)
    except (ValueError, KeyError, ConnectionError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    meta = client.get_server_metadata()
    max_steps = args.max_steps or MAX_STEPS[args.suite]
    env = make_env(args.suite, args.task, resolution=int(meta.get("image_size", 128)))  # 0: a camera-less policy
    keys = list((meta.get("observation_keys") or {}).get("package") or []) or None
    state = list((meta.get("proprio") or {}).get("features") or []) or None
    openpi = not args.package_keys and "object_poses" not in (keys or [])  # openpi's keys carry no objects
    chunker = ActionChunker(client.infer, execute=args.execute, control_hz=20.0)
    init_states = get_init_states(args.suite, args.task)
    successes = 0
    print(f"task: {task.language} (server: steps={meta.get('steps')}, checkpoint={meta.get('checkpoint', '?')})")
    try:
        for ep in range(args.episodes):
            obs = env.set_init_state(init_states[ep % len(init_states)])
            chunker.reset()
            for _ in range(NUM_WAIT_STEPS):
                obs, *_ = env.step(NOOP)
            success, t_tick = False, time.perf_counter()
            for step in tqdm(range(max_steps), desc=f"episode {ep}", leave=False):
                obs, _, success, _, _ = env.step(chunker.act(to_request(obs, openpi, keys, state)))
                if success:
                    break
                if args.realtime:
                    t_tick += 0.05
                    time.sleep(max(0.0, t_tick - time.perf_counter()))
            successes += int(success)
            print(f"episode {ep}: {'success' if success else 'failure'} after {step + 1} steps, "
                  f"round trip ~{chunker.latency_s * 1e3:.0f} ms, controller waited on {chunker.waits} chunks")
    except RuntimeError as e:  # the server answered with an error frame
        print(f"error: {e}", file=sys.stderr)
        return 1
    finally:
        env.close()
        client.close()
    print(f"done: {successes}/{args.episodes} episodes succeeded on {args.suite} task {args.task}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
