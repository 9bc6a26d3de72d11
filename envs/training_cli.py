"""Train the LIBERO distributional diffusion policy (Hydra overrides, key=value).

  python scripts/train_policy.py suite=libero_10 loss=energy loss.lam=0.5 loss.beta=1
  python scripts/train_policy.py suite=libero_4 model=paper           # GPU
  python scripts/train_policy.py resume=true                          # continue runs/latest
  torchrun --nproc_per_node=2 scripts/train_policy.py suite=libero_10 # DDP
  python scripts/train_policy.py suite=libero_goal --cfg job          # print the composed config, exit
  python scripts/train_policy.py -m loss=energy,mse train.steps=10    # sweep: one run per combination

Groups: suite={libero_10,libero_goal,libero_object,libero_spatial,libero_90,libero_4}
        loss={energy,mse,kernel_rbf,kernel_imq,kernel_exp}  model={small,paper}
Keys:   train.steps, train.batch_size, train.lr, train.eval_every, train.wandb_mode, ...
        (see configs/train_policy.yaml). Every key is type-checked (ints, floats, bools
        true/false); a wrong one is a one-line error, exit code 2. Output:
        runs/<suite>/<timestamp>/; runs/latest points at it from its first checkpoint on.
Flags:  --cfg job|hydra|all (-c): print the config (YAML) and exit, --resolve resolves it;
        -m/--multirun: comma-separated values (key=a,b), range(...) and choice(...) sweep;
        the combinations run one after another in this process, each in a new run dir,
        then one summary line per job (non-zero exit if any failed).
"""

from __future__ import annotations

import os
import sys
from contextlib import ExitStack
from pathlib import Path


def _eval_fn(cfg, run_dir: Path):
    """envs.evaluation.harness.run_evaluation as the periodic in-simulator evaluation callback."""
    try:
        from envs.evaluation.harness import EvalConfig, run_evaluation  # lazy: simulator only when evaluating
        from policy.utils import state_sha256
    except ImportError as exc:
        print(f"note: envs.evaluation.harness is not available ({exc}); periodic evaluation disabled", file=sys.stderr)
        return None

    def fn(policy, step):
        ecfg = EvalConfig(suites=list(cfg.suite.suites), out_dir=str(run_dir / "evals" / f"step_{step:08d}"),
                          episodes=int(cfg.train.eval_episodes), workers=int(cfg.eval.workers), steps=int(cfg.eval.steps),
                          max_steps=cfg.eval.max_steps, tasks={s: list(cfg.eval.tasks) for s in cfg.suite.suites} if cfg.eval.tasks else {},
                          policy=f"{run_dir.name}@{step}", progress=False,
                          resolution=128 if policy.config.cameras else 0,  # camera-less: nothing rendered
                          producer={"kind": "training", "path": str(run_dir.resolve()), "train_step": int(step),
                                    "weights_sha256": state_sha256(policy.net)})
        overall = run_evaluation(policy, ecfg)["overall"]
        return {"success_rate": float(overall["success_rate"]), "episodes": float(overall["episodes"])}

    return fn


def _parse_args(argv: list[str]) -> tuple[list[str], str | None, bool, bool]:
    """argv -> (overrides, --cfg mode or None, --resolve, --multirun). ValueError on an unknown flag."""
    overrides: list[str] = []
    mode, resolve, multirun = None, False, False
    args = list(argv)
    while args:
        a = args.pop(0)
        if a in ("-m", "--multirun"):
            multirun = True
        elif a == "--resolve":
            resolve = True
        elif a in ("-c", "--cfg") or a.startswith("--cfg="):
            value = a.split("=", 1)[1] if "=" in a else (args.pop(0) if args else "")
            if value not in ("job", "hydra", "all"):
                raise ValueError(f"--cfg takes job, hydra or all (got {value!r})")
            mode = value
        elif a.startswith("-"):
            raise ValueError(f"unknown option {a}; train_policy.py takes key=value overrides, --cfg job|hydra|all, "
                             "--resolve and -m/--multirun (see --help)")
        else:
            overrides.append(a)
    return overrides, mode, resolve, multirun


def _compose_job(overrides: list[str]):
    """The typed config of one run: configs/ + overrides, or the resumed run's own config."""
    from policy.training.config import compose_config, resume_config, resume_run_dir

    cfg = compose_config(overrides)
    if cfg.resume:  # continue with the run's own config (+ dotted overrides such as train.steps=...)
        cfg = resume_config(resume_run_dir(cfg), overrides)
    return cfg


def _print_config(cfg, mode: str, resolve: bool, overrides: list[str]) -> None:
    from omegaconf import OmegaConf

    from policy.training.config import compose_hydra_config

    if mode in ("hydra", "all"):
        hydra_cfg = compose_hydra_config([o for o in overrides if not o.startswith(("resume=", "run_dir="))])
        print(OmegaConf.to_yaml(hydra_cfg, resolve=False), end="")
    if mode in ("job", "all"):
        print(OmegaConf.to_yaml(cfg, resolve=resolve), end="")


def _train_job(cfg) -> tuple[int, str]:
    """Train one composed config. Returns (exit code, one-line summary)."""
    from policy.training.config import data_dirs, make_run_dir, resume_run_dir, split_config
    from policy.utils import folder_lock

    try:
        policy_cfg, train_cfg, loss_cfg, bandwidth, multiplier = split_config(cfg)
        from envs.libero.data_sources import open_training_data

        rank = int(os.environ.get("RANK", "0"))
        data = cfg.data
        dataset = open_training_data(data_dirs(cfg, Path.cwd()), policy_cfg.spec, policy_cfg.chunk_size, data.augment, data.shift,
                                     data.image_size or policy_cfg.image_size, train_cfg.seed, data.reader, data.cache_dir,
                                     data.fps, dict(data.lerobot_features), data.lerobot_stats, progress=rank == 0)
    except (ValueError, FileNotFoundError, FileExistsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2, f"error: {exc}"
    latest_in = None  # a new run under runs_root becomes runs/latest at its first checkpoint
    if cfg.resume:
        run_dir = resume_run_dir(cfg)
    elif cfg.run_dir:
        run_dir = Path(cfg.run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
    elif rank == 0:
        run_dir = make_run_dir(cfg.runs_root, cfg.suite.name)
        latest_in = cfg.runs_root
    else:
        run_dir = Path(cfg.runs_root) / "latest"  # rank 0 created it; wait below
    with ExitStack() as held:
        if rank == 0:  # one training per run dir: a second one is told at once instead of mixing checkpoints
            try:
                held.enter_context(folder_lock(run_dir, "run dir"))
            except ValueError as exc:
                print(f"error: {exc}", file=sys.stderr)
                return 2, f"error: {exc}"
        return _train_in(cfg, run_dir, rank, latest_in, policy_cfg, train_cfg, loss_cfg, bandwidth, multiplier, dataset)


def _train_in(cfg, run_dir: Path, rank: int, latest_in, policy_cfg, train_cfg, loss_cfg, bandwidth, multiplier,
              dataset) -> tuple[int, str]:
    """:func:`_train_job` once rank 0 holds the run dir."""
    from omegaconf import OmegaConf

    from envs.libero.dataset import DatasetError
    from policy.training.loop import train
    from policy.utils import atomic_write_text

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        import torch.distributed as dist

        dist.init_process_group("nccl" if __import__("torch").cuda.is_available() else "gloo")
        holder = [str(run_dir.resolve())]
        dist.broadcast_object_list(holder, src=0)
        run_dir = Path(holder[0])
    if rank == 0:
        atomic_write_text(run_dir / "config.yaml", OmegaConf.to_yaml(cfg))
    eval_fn = _eval_fn(cfg, run_dir) if train_cfg.eval_every > 0 else None
    print(f"{len(dataset)} samples from {len(dataset.files)} files, {len(dataset.instructions)} tasks -> {run_dir}", file=sys.stderr)
    try:
        result = train(policy_cfg, train_cfg, loss_cfg, dataset, run_dir, bool(cfg.resume), eval_fn,
                       wandb_config=OmegaConf.to_container(cfg, resolve=True), bandwidth=bandwidth, bandwidth_multiplier=multiplier,
                       latest_in=latest_in)
    except (ValueError, FileNotFoundError, DatasetError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1, f"error: {exc}"
    finally:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
    line = (f"done: {result.step} steps in {result.seconds:.0f}s, loss {result.first_loss:.4f} -> {result.last_loss:.4f}; "
            f"policy at {run_dir / 'policy'}")
    if rank == 0:
        print(line)
    return 0, line


def _multirun(overrides: list[str], mode: str | None, resolve: bool) -> int:
    """-m: every combination of the swept values, composed and checked first, then trained in turn."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    from policy.training.config import split_config

    try:
        jobs = BasicSweeper.split_arguments(OverridesParser.create().parse_overrides(overrides), None)[0]
    except HydraException as exc:
        print(f"error: bad sweep: {str(exc).strip().splitlines()[0]}", file=sys.stderr)
        return 2
    cfgs = []
    try:
        for job in jobs:  # every job's config is checked before the first one trains
            cfg = _compose_job(job)
            if cfg.resume:
                raise ValueError("-m/--multirun starts new runs; resume=true continues one run, drop -m")
            if not mode:
                split_config(cfg)
            cfgs.append(cfg)
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: job {' '.join(job)}: {exc}", file=sys.stderr)
        return 2
    dirs = [c.run_dir for c in cfgs if c.run_dir]
    if len(set(dirs)) < len(dirs):
        print(f"error: {len(dirs)} jobs would share run_dir {dirs[0]}; drop run_dir= or sweep it", file=sys.stderr)
        return 2
    if mode:
        for i, (job, cfg) in enumerate(zip(jobs, cfgs)):
            print(f"# job {i}: {' '.join(job)}")
            _print_config(cfg, mode, resolve, job)
        return 0
    rank = int(os.environ.get("RANK", "0"))
    results = []
    for i, (job, cfg) in enumerate(zip(jobs, cfgs)):
        if rank == 0:
            print(f"[multirun] job {i + 1}/{len(jobs)}: {' '.join(job)}", file=sys.stderr)
        results.append(_train_job(cfg))
    if rank == 0:
        for i, (job, (rc, line)) in enumerate(zip(jobs, results)):
            print(f"job {i} ({' '.join(job)}): {line}")
    return max(rc for rc, _ in results) if results else 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__.strip())
        return 0
    try:
        overrides, mode, resolve, multirun = _parse_args(argv)
        if multirun:
            return _multirun(overrides, mode, resolve)
        cfg = _compose_job(overrides)
        if mode:
            _print_config(cfg, mode, resolve, overrides)
            return 0
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return _train_job(cfg)[0]


if __name__ == "__main__":
    raise SystemExit(main())
