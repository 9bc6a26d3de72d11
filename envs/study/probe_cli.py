"""Which way does a policy go at a fork? A probe of the route modes (``--detour``) and of the
grasp-yaw modes (``--yaw-modes``, with ``--fork yaw``).

With route modes, every scripted reach starts with a sideways step to the left or to the
right (50/50). This probe compares the first action chunk of a trained policy with that
choice, from

  (a) the first observation of every training demonstration (the policy saw these), and
  (b) the official initial states of the task after the protocol's no-op steps (held out),

drawing ``--samples`` chunks per observation (sampler noise from seeded generators). The
*side* of a chunk is the sign of its mean action over the first 4 steps along the fork's
axis (the first principal axis of the demonstrations' first 4 actions in x, y); its
*strength* is the size of that mean over the demonstrations' mean size. A policy that
averages the two modes has strength ~0; one that commits to a side has ~1. A policy that
represents both modes picks either side at the same observation.

With ``--fork yaw`` the fork is the quarter turn back above the object: the observation is
the one of every training demonstration at its *fork step* (the first strong yaw command
after the calm that ends the turn to the travel yaw), the coordinate is the mean yaw command
(action 5) over the chunk's first 4 actions, and "left" is a counter-clockwise turn. Its
held-out observations come from the scripted demonstrator (with yaw modes) run from the
official initial states until its own fork step: the policy never saw those layouts.

Example (the study's cpu_bimodal runs; ~2 minutes on a CPU):
  python scripts/probe_route_modes.py --checkpoint runs/study/cpu_bimodal/libero_object/mse \\
      --data data/study_cpu_bimodal/libero_object --steps 1 --samples 8 --out eval/probe/mse.json
  python scripts/probe_route_modes.py --fork yaw --task 1 --checkpoint runs/study/cpu_yaw_task1/libero_object/mse \\
      --data data/study_cpu_yaw/libero_object --steps 1 --samples 8
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Iterator

import numpy as np

HEAD = 4  # actions of the chunk that decide its side


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="run dir or pretrained policy dir")
    p.add_argument("--data", required=True, help="folder holding the task's route-mode demonstration file")
    p.add_argument("--suite", default="libero_object")
    p.add_argument("--task", type=int, default=0)
    p.add_argument("--fork", choices=("route", "yaw"), default="route",
                   help="route: the sideways step at the start (--detour demos, default); yaw: the quarter "
                        "turn back above the object (--yaw-modes demos)")
    p.add_argument("--steps", type=int, default=1, help="sampler steps (default 1)")
    p.add_argument("--samples", type=int, default=8, help="chunks drawn per observation (default 8)")
    p.add_argument("--xi-scale", type=float, default=1.0, help="scale of the generator noise xi (default 1, as "
                   "trained; eval_rollouts.py --xi-scale)")
    p.add_argument("--states", type=int, default=50, help="official initial states used (default 50)")
    p.add_argument("--fast-render", action="store_true", help="render as the demonstrations were (fast meshes)")
    p.add_argument("--out", default=None, help="write the summary JSON here (atomically)")
    return p.parse_args(argv)


def fork_axis(first: np.ndarray) -> np.ndarray:
    """Unit (2,) principal axis of the demonstrations' mean first (x, y) actions ``first`` (N, 2)."""
    centred = first - first.mean(axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    return vt[0]


def sides(chunks: np.ndarray, axis: np.ndarray) -> np.ndarray:
    """Signed fork coordinate (...,) of action chunks (..., 8, 7): their first actions' mean along ``axis``."""
    return chunks[..., :HEAD, :2].mean(axis=-2) @ axis


def yaw_fork_step(yaw: np.ndarray, strong: float = 0.5, calm: int = 2) -> int:
    """Fork step of a yaw-mode demonstration from its yaw commands ``yaw`` (T,): the first strong
    command (|a| > ``strong``) after at least ``calm`` weak ones that follow the first strong one
    (the turn to the travel yaw). Raises ValueError when the demonstration has no such fork."""
    strong_steps = np.abs(yaw) > strong
    t = int(np.argmax(strong_steps))
    if not strong_steps[t]:
        raise ValueError("no yaw command in this demonstration: was it made with --yaw-modes?")
    quiet = 0
    for k in range(t, len(yaw)):
        if not strong_steps[k]:
            quiet += 1
        elif quiet >= calm:
            return k
        else:
            quiet = 0
    raise ValueError("no turn back after the travel yaw in this demonstration: was it made with --yaw-modes?")


def official_starts(args: argparse.Namespace, resolution: int) -> Iterator[tuple[int, Any, dict]]:
    """(i, env, observation) for the task's first ``args.states`` official initial states, each
    after the protocol's no-op steps, in one rendered environment (closed at the end)."""
    from envs.libero.suites import NOOP_ACTION, NUM_WAIT_STEPS, get_init_states
    from envs.libero.env import make_env

    states = get_init_states(args.suite, args.task)[: args.states]
    env = make_env(args.suite, args.task, resolution=resolution, fast_render=args.fast_render)
    try:
        env.reset(seed=0)
        for i, state in enumerate(states):
            obs = env.set_init_state(state)
            for _ in range(NUM_WAIT_STEPS):
                obs, *_ = env.step(NOOP_ACTION)
            yield i, env, obs
    finally:
        env.close()


def demo_observations(args: argparse.Namespace, path: Path, steps: list[int], resolution: int) -> list[dict]:
    """The observation of demonstration i at step ``steps[i]``, from its recorded simulator state
    (``data/demo_N/states``, in the dataset's demo order) set in one environment: every feature a
    policy may read (cameras, states, object poses), whatever its kind."""
    import h5py

    from envs.libero.dataset import _demo_keys
    from envs.libero.env import make_env

    with h5py.File(path, "r") as f:
        states = [np.asarray(f["data"][k]["states"][t]) for k, t in zip(_demo_keys(f["data"]), steps)]
    env = make_env(args.suite, args.task, resolution=resolution, fast_render=args.fast_render)
    try:
        env.reset(seed=0)
        return [env.set_init_state(state) for state in states]
    finally:
        env.close()


def held_out_observations(args: argparse.Namespace, resolution: int) -> list[dict]:
    return [obs for _, _, obs in official_starts(args, resolution)]


def held_out_yaw_forks(args: argparse.Namespace, resolution: int, max_steps: int = 150) -> list[dict]:
    """Observations at the grasp-yaw fork of the scripted demonstrator (yaw modes on) run from
    each official initial state (after the protocol's no-op steps): the observation before the
    first strong yaw command that follows the calm after the turn to the travel yaw."""
    from envs.libero.suites import get_task
    from envs.scripted.planner import ScriptedPlanner, parse_goal

    goal = parse_goal(get_task(args.suite, args.task).bddl_file)
    out = []
    for i, env, obs in official_starts(args, resolution):
        planner = ScriptedPlanner(env.robosuite_env, goal, np.random.default_rng(i), yaw_modes=True)
        yaws: list[float] = []
        for action in planner.actions():
            yaws.append(float(action[5]))
            try:
                if yaw_fork_step(np.asarray(yaws)) == len(yaws) - 1:
                    out.append(obs)  # the observation this fork action was chosen from
                    break
            except ValueError:
                pass
            if len(yaws) >= max_steps:
                break
            obs, *_ = env.step(action)
    return out


def draw(policy, obs_list: list[dict], steps: int, samples: int, xi_scale: float = 1.0) -> np.ndarray:
    """(samples, N, 8, 7) chunks: ``samples`` draws for each observation, seeded 0..samples-1
    (``xi_scale``: the generator noise's scale, :meth:`DiffusionPolicy.predict`)."""
    import torch

    from envs.libero.observation import stack_observations

    batch = stack_observations(obs_list, getattr(getattr(policy, "config", None), "spec", None))
    kw = {"xi_scale": xi_scale} if xi_scale != 1.0 else {}
    return np.stack([policy.predict(batch, steps=steps, generator=torch.Generator().manual_seed(k), **kw)
                     for k in range(samples)])


def weak_share(coord: np.ndarray, scale: float) -> float:
    """Share of fork coordinates under half the demonstrations' mean size ``scale`` (averaged draws)."""
    return float((np.abs(coord) < 0.5 * scale).mean())


def summarise(coord: np.ndarray, scale: float) -> dict:
    """coord (samples, N) signed fork coordinates -> side and strength statistics. ``weak``: the
    share of draws under half the demonstrations' mean size (an averaged draw), which tells a
    policy that averages some draws (strength 0.7 = 30% weak) from one that turns less every time."""
    left = coord > 0
    p_left = left.mean(axis=0)  # (N,) per observation
    return {"strength": float(np.abs(coord).mean() / scale),
            "weak": weak_share(coord, scale),
            "p_left": float(left.mean()),
            "both_sides": float(((p_left > 0) & (p_left < 1)).mean()),
            "observations": int(coord.shape[1]), "samples": int(coord.shape[0])}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from envs.libero.dataset import DatasetError, find_hdf5_files, read_demo_file
    from envs.evaluation.policies import load_policy
    from envs.evaluation.results import atomic_write_text
    from envs.libero.suites import get_task

    try:
        if not args.xi_scale >= 0.0:
            raise ValueError(f"--xi-scale must be >= 0 (1 = as trained), got {args.xi_scale}")
        task = get_task(args.suite, args.task)
        files = [p for p in find_hdf5_files(args.data) if p.name.startswith(task.name)]
        if not files:
            raise FileNotFoundError(f"no demonstration file of {task.name!r} in {args.data}")
        demos = read_demo_file(files[0])
        policy = load_policy("checkpoint", args.checkpoint)
    except (DatasetError, FileNotFoundError, KeyError, ValueError) as err:
        print(f"error: {str(err).strip(chr(34) + chr(39))}", file=sys.stderr)
        return 2
    if args.fork == "yaw":
        try:
            forks = [yaw_fork_step(d.actions[:, 5]) for d in demos]
        except ValueError as err:
            print(f"error: {files[0]}: {err}", file=sys.stderr)
            return 2
        demo_coord = np.array([d.actions[t:t + HEAD, 5].mean() for d, t in zip(demos, forks)])
        axis = np.array([1.0])
        coord_of = lambda chunks: chunks[..., :HEAD, 5].mean(axis=-1)  # noqa: E731
    else:
        forks = [0] * len(demos)
        first_actions = np.stack([d.actions[:HEAD, :2].mean(axis=0) for d in demos])
        axis = fork_axis(first_actions)
        demo_coord = first_actions @ axis
        coord_of = lambda chunks: sides(chunks, axis)  # noqa: E731
    scale = float(np.abs(demo_coord).mean())
    resolution = int(policy.config.render_resolution)
    train_obs = demo_observations(args, files[0], forks, resolution)
    train = coord_of(draw(policy, train_obs, args.steps, args.samples, args.xi_scale))  # (samples, demos)
    summary = {
        "checkpoint": str(args.checkpoint), "fork": args.fork, "steps": args.steps, "task": task.name,
        **({"xi_scale": args.xi_scale} if args.xi_scale != 1.0 else {}),
        "axis": axis.round(4).tolist(),
        "demos": {"n": len(demos), "p_left": float((demo_coord > 0).mean()), "strength": 1.0,
                  "weak": weak_share(demo_coord, scale)},
        "train_starts": {**summarise(train, scale),
                         "agrees_with_demo": float((np.sign(train) == np.sign(demo_coord)[None]).mean())},
    }
    if args.fork == "yaw":
        summary["fork_steps"] = {"mean": float(np.mean(forks)), "min": int(min(forks)), "max": int(max(forks))}
        held = held_out_yaw_forks(args, resolution)
        if not held:
            print(f"error: the scripted demonstrator reached no yaw fork from the initial states of {task.name!r}",
                  file=sys.stderr)
            return 2
    else:
        held = held_out_observations(args, resolution)
    summary["held_out_starts"] = summarise(coord_of(draw(policy, held, args.steps, args.samples, args.xi_scale)), scale)
    print(f"{Path(args.checkpoint).name}, {args.steps} sampler step(s), {args.samples} chunks per observation")
    print("| starts | observations | p(left) | both sides sampled | strength | weak draws | agrees with demo |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    d = summary["demos"]
    print(f"| demonstrations | {d['n']} | {d['p_left']:.2f} | - | 1.00 | {d['weak']:.2f} | - |")
    for name in ("train_starts", "held_out_starts"):
        s = summary[name]
        agree = f"{s['agrees_with_demo']:.2f}" if "agrees_with_demo" in s else "-"
        print(f"| {name.replace('_', ' ')} | {s['observations']} | {s['p_left']:.2f} | {s['both_sides']:.2f} "
              f"| {s['strength']:.2f} | {s['weak']:.2f} | {agree} |")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(Path(args.out), json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
