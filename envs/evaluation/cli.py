"""Evaluate a policy on LIBERO with the common protocol (50 episodes per task,
episode i from init state i, 10 no-op wait steps, per-suite max steps).

  python scripts/eval_rollouts.py --steps 2                 # runs/latest, its suites
  python scripts/eval_rollouts.py --steps 1,2,4,8           # sweep, plots success vs steps
  python scripts/eval_rollouts.py --policy noop --suites libero_goal --tasks 0 --episodes 2
  python scripts/eval_rollouts.py --steps 2 --ray auto --workers 64   # simulators as Ray actors

Results: <out>/[steps_<k>/]{eval_config.json,episodes.jsonl,results.json,results.md,results.png}.
Rerunning with the same --out resumes and skips finished episodes; eval_config.json records
what made them (checkpoint step and weights sha256, steps, churn, protocol) and a rerun that
differs (e.g. the run was trained further) is refused: use a new --out or delete the folder.
With --ray the simulator workers are Ray actors on the nodes of a cluster (auto: RAY_ADDRESS or
the cluster this machine is part of, else a local Ray instance; or host:port); the policy runs
batched in this process, or with --ray-policy actor in one Ray actor (on a GPU when the cluster has
one), or with --ray-policy node in one actor per node (docs/evaluation.md, "Cluster").
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def parse_int_list(text: str, what: str) -> list[int]:
    """"1,2,4" -> [1, 2, 4]; one-line ValueError naming ``what`` otherwise."""
    try:
        values = [int(x) for x in text.split(",") if x.strip() != ""]
    except ValueError:
        raise ValueError(f"bad {what} list {text!r}; expected comma-separated integers such as 1,2,4,8") from None
    if not values:
        raise ValueError(f"empty {what} list; expected comma-separated integers such as 1,2,4,8")
    return values


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", help="run dir or pretrained policy dir (default: runs/latest)")
    p.add_argument("--policy", default="checkpoint", help="checkpoint (default) | noop | replay:<hdf5>")
    p.add_argument("--steps", default="2", help="sampler steps, or a list such as 1,2,4,8 (sweep)")
    p.add_argument("--churn", type=float, default=0.0, help="sampler churn in [0,1] (0 = DDIM)")
    p.add_argument("--suites", help="comma list (default: the checkpoint's suites, else the four)")
    p.add_argument("--tasks", help="comma list of task indices within each suite (default: all)")
    p.add_argument("--episodes", type=int, default=50, help="episodes per task (default 50)")
    p.add_argument("--workers", type=int, default=2, help="parallel simulator processes (default 2)")
    p.add_argument("--replan-every", type=int, default=8, help="actions executed per chunk (1..8, default 8)")
    p.add_argument("--max-steps", type=int, help="override the per-suite episode cap (debugging)")
    p.add_argument("--out", help="output folder (default: eval/<policy or run name>)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--noise", default="shared", choices=["shared", "episode", "fixed"],
                   help="sampler noise: shared (one generator; episodes depend on the batching), episode (each chunk "
                        "its own, seeded by seed/task/episode/step: reproducible whatever the workers), fixed (the "
                        "same noise for every chunk of an episode)")
    p.add_argument("--xi-scale", type=float, default=1.0, metavar="S",
                   help="multiply a distributional policy's generator noise xi by S (default 1, as trained; "
                        "below 1 narrows each draw, a temperature; an MSE policy ignores xi)")
    p.add_argument("--video", type=int, default=0, metavar="K", help="save mp4s of the first K episodes per task (a camera-less "
                   "policy's: the agentview camera, drawn for those episodes only)")
    p.add_argument("--init-states", default="official", choices=["official", "fresh"],
                   help="official: episode i from the task's official init state i (the protocol); fresh: from fresh "
                        "layouts no demonstration used (seeded by task, episode and --seed; kept in <out>/init_states)")
    p.add_argument("--record-chunks", action="store_true",
                   help="save each episode's predicted action chunks (<out>/chunks/, for envs.study.switching)")
    p.add_argument("--fast-render", action="store_true", help="render simplified visual meshes (CPU speed-up)")
    p.add_argument("--device", help="torch device of the policy (default cpu; with --ray-policy actor|node: cuda "
                   "where the actor's node has a GPU, else cpu)")
    p.add_argument("--ray", metavar="ADDRESS", help="run the simulator workers as Ray actors: auto (RAY_ADDRESS or this "
                   "machine's cluster, else a local instance) or host:port; needs pip install -e \".[cluster]\"")
    p.add_argument("--ray-policy", default="driver", choices=["driver", "actor", "node"],
                   help="with --ray, where the policy runs: driver (this process, default), actor (one Ray actor, "
                        "on a GPU when the cluster has one) or node (one actor per node of the workers)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    ray_pool = None  # envs.evaluation.ray_pool once --ray connected
    remote = None  # envs.evaluation.ray_policy.RemotePolicy with --ray-policy actor|node
    try:
        from envs.evaluation.policies import load_policy_and_producer, resolve_checkpoint
        from envs.evaluation.results import plot_steps_sweep
        from envs.evaluation.harness import EvalConfig, run_evaluation
        from envs.libero.suites import DEFAULT_EVAL_SUITES, SUITES, check_suite
        from policy.utils import atomic_write_text

        steps_list = parse_int_list(args.steps, "--steps")
        if any(k < 1 for k in steps_list):
            raise ValueError(f"--steps values must be >= 1, got {args.steps}")
        if not 0.0 <= args.churn <= 1.0:
            raise ValueError(f"--churn must be in [0, 1], got {args.churn}")
        if args.ray is not None:  # before the policy loads: a bad address is told at once
            from envs.evaluation import ray_cluster, ray_pool

            print(ray_cluster.connect(args.ray, num_cpus=args.workers), flush=True)
        if args.ray_policy != "driver" and (args.ray is None or args.policy != "checkpoint"):
            raise ValueError(f"--ray-policy {args.ray_policy} runs a checkpoint on a Ray cluster: add --ray auto (or an "
                             "address) and drop --policy, or use --ray-policy driver")
        local_device = (args.device or "cpu") if args.ray_policy == "driver" else "cpu"
        policy, producer = load_policy_and_producer(args.policy, args.checkpoint, local_device)
        if args.ray_policy != "driver":
            from envs.evaluation.ray_policy import RemotePolicy

            remote = policy = RemotePolicy(policy, resolve_checkpoint(args.checkpoint), args.ray_policy,
                                           args.device or "auto", seed=args.seed)
        if args.suites:
            suites = [check_suite(s.strip()) for s in args.suites.split(",") if s.strip()]
        else:
            trained: list[str] = []
            for s in getattr(getattr(policy, "config", None), "suites", None) or []:
                trained += list(DEFAULT_EVAL_SUITES) if s == "libero_4" else [s]
            suites = [s for s in dict.fromkeys(trained) if s in SUITES] or list(DEFAULT_EVAL_SUITES)
        tasks = parse_int_list(args.tasks, "--tasks") if args.tasks else None
        config = getattr(policy, "config", None)  # a camera-less policy's envs render nothing (resolution 0)
        resolution = int(config.render_resolution) if hasattr(config, "render_resolution") else 128
        if args.policy == "checkpoint":
            name = resolve_checkpoint(args.checkpoint).name
        else:
            name = args.policy.split(":")[0]
        out_root = Path(args.out or Path("eval") / name)
        points = {}
        for k in steps_list:
            cfg = EvalConfig(
                suites=suites,
                out_dir=str(out_root / f"steps_{k}" if len(steps_list) > 1 else out_root),
                tasks={s: tasks for s in suites} if tasks else {},
                episodes=args.episodes,
                workers=args.workers,
                steps=k,
                churn=args.churn,
                replan_every=args.replan_every,
                resolution=resolution,
                fast_render=args.fast_render,
                max_steps=args.max_steps,
                seed=args.seed,
                noise=args.noise,
                xi_scale=args.xi_scale,
                video=args.video,
                record_chunks=args.record_chunks,
                init_states=args.init_states,
                policy=args.policy if args.policy != "checkpoint" else str(resolve_checkpoint(args.checkpoint)),
                producer=producer,
            )
            pool = None if ray_pool is None else ray_pool.RayPool(cfg.benchmark, resolution, args.fast_render, args.ray)
            if remote is not None:
                remote.bind(pool)
            summary = run_evaluation(policy, cfg, pool=pool)
            points[k] = summary
            print((Path(cfg.out_dir) / "results.md").read_text())
        if len(steps_list) > 1:
            atomic_write_text(out_root / "steps_sweep.json", json.dumps(
                {str(k): {s: d["median_over_tasks"] for s, d in v["suites"].items()} for k, v in points.items()}, indent=2))
            plot_steps_sweep(points, out_root / "steps_sweep.png")
    except (ValueError, FileNotFoundError, KeyError) as exc:
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    except Exception as exc:
        if ray_pool is None or not type(exc).__module__.startswith("ray"):
            raise
        print(f"error: Ray: {type(exc).__name__}: {' '.join(str(exc).split())[:300]}; rerun the same command to resume",
              file=sys.stderr)
        return 1
    finally:
        if remote is not None:
            remote.close()
        if ray_pool is not None:
            ray_cluster.disconnect()
    last = points[steps_list[-1]]
    o = last["overall"]
    errors = sum(d["errors"] for d in last["suites"].values())
    print(f"done: {o['episodes']} episodes over {', '.join(suites)}, success {100 * o['success_rate']:.1f}% "
          f"(median over tasks {100 * o['median_over_tasks']:.1f}%), {errors} errors, "
          f"{last['wall_time_s']:.0f} s; results in {out_root}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
