#!/usr/bin/env python
"""Train the LIBERO distributional diffusion policy (Hydra overrides, key=value).

  python scripts/train_policy.py suite=libero_10 loss=energy loss.lam=0.5 loss.beta=1
  python scripts/train_policy.py suite=libero_4 model=paper           # GPU
  python scripts/train_policy.py resume=true                          # continue runs/latest
  torchrun --nproc_per_node=2 scripts/train_policy.py suite=libero_10 # DDP

Groups: suite={libero_10,libero_goal,libero_object,libero_spatial,libero_90,libero_4}
        loss={energy,mse,kernel_rbf,kernel_imq,kernel_exp}  model={small,paper}
Keys:   train.steps, train.batch_size, train.lr, train.eval_every, train.wandb_mode, ...
        (see configs/train_policy.yaml). Output: runs/<suite>/<timestamp>/; runs/latest points
        at it from its first checkpoint on.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _eval_fn(cfg, run_dir: Path):
    """envs.evaluate.run_evaluation as the periodic in-simulator evaluation callback."""
    try:
        from envs.evaluate import EvalConfig, run_evaluation  # lazy: simulator only when evaluating
    except ImportError as exc:
        print(f"note: envs.evaluate is not available ({exc}); periodic evaluation disabled", file=sys.stderr)
        return None

    def fn(policy, step):
        ecfg = EvalConfig(suites=list(cfg.suite.suites), out_dir=str(run_dir / "evals" / f"step_{step:08d}"),
                          episodes=int(cfg.train.eval_episodes), workers=int(cfg.eval.workers), steps=int(cfg.eval.steps),
                          max_steps=cfg.eval.max_steps, tasks={s: list(cfg.eval.tasks) for s in cfg.suite.suites} if cfg.eval.tasks else {},
                          policy=f"{run_dir.name}@{step}", progress=False)
        overall = run_evaluation(policy, ecfg)["overall"]
        return {"success_rate": float(overall["success_rate"]), "episodes": float(overall["episodes"])}

    return fn


def main(argv: list[str]) -> int:
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__.strip())
        return 0
    from omegaconf import OmegaConf

    from policy.training import train
    from policy.training_config import compose_config, data_dirs, make_run_dir, resume_config, resume_run_dir, split_config

    try:
        cfg = compose_config(argv, REPO / "configs")
        if cfg.resume:  # continue with the run's own config (+ dotted overrides such as train.steps=...)
            cfg = resume_config(resume_run_dir(cfg), argv)
        policy_cfg, train_cfg, loss_cfg, bandwidth, multiplier = split_config(cfg)
        from envs.dataset import DatasetError, LiberoDataset

        rank = int(os.environ.get("RANK", "0"))
        image_size = cfg.data.image_size or policy_cfg.image_size
        dataset = LiberoDataset(data_dirs(cfg, Path.cwd()), policy_cfg.chunk_size, cfg.data.augment, cfg.data.shift,
                                image_size, train_cfg.seed, progress=rank == 0)
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
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
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        import torch.distributed as dist

        dist.init_process_group("nccl" if __import__("torch").cuda.is_available() else "gloo")
        holder = [str(run_dir.resolve())]
        dist.broadcast_object_list(holder, src=0)
        run_dir = Path(holder[0])
    if rank == 0:
        (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    eval_fn = _eval_fn(cfg, run_dir) if train_cfg.eval_every > 0 else None
    print(f"{len(dataset)} samples from {len(dataset.files)} files, {len(dataset.instructions)} tasks -> {run_dir}", file=sys.stderr)
    try:
        result = train(policy_cfg, train_cfg, loss_cfg, dataset, run_dir, bool(cfg.resume), eval_fn,
                       wandb_config=OmegaConf.to_container(cfg, resolve=True), bandwidth=bandwidth, bandwidth_multiplier=multiplier,
                       latest_in=latest_in)
    except (ValueError, FileNotFoundError, DatasetError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
    if rank == 0:
        print(f"done: {result.step} steps in {result.seconds:.0f}s, loss {result.first_loss:.4f} -> {result.last_loss:.4f}; "
              f"policy at {run_dir / 'policy'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
