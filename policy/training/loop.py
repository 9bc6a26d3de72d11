"""Training loop of the LIBERO policy (paper Section 6.3): AdamW, cosine warmup, EMA,
grad clipping, bf16 autocast on CUDA, atomic checkpoints, exact resume, DDP.

The data set is duck-typed (``policy`` never imports ``envs``): anything with
``__len__``, ``__getitem__`` returning the items of envs.libero.dataset.LiberoDataset,
``stats()``, ``instructions`` and ``set_epoch(epoch)``. Evaluation is a callback
(the script wires envs.evaluation.harness in), called with the EMA policy.

Run dir layout: ``checkpoints/``, ``metrics.jsonl``, ``policy/`` (EMA weights in
save_pretrained format, written at the end and after every checkpoint).
Under torchrun (WORLD_SIZE > 1) it runs DistributedDataParallel (NCCL on GPU, gloo on
CPU); every rank sees a disjoint shard of each epoch's permutation.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader
from tqdm import tqdm

from policy.model.config import PolicyConfig, TrainConfig
from policy.diffusion import Weighting
from policy.model.network import ObjectTokens, PolicyNetwork
from policy.model.language import LanguageEncoder
from policy.training.optim import EMA, cosine_warmup_scheduler, optimizer_step
from policy.model.policy import DiffusionPolicy
from policy.scoring import LossConfig, median_bandwidth
from policy.training.checkpoint import list_checkpoints, load_checkpoint, save_checkpoint
from policy.training.config import link_latest
from policy.utils import atomic_write_text

EvalFn = Callable[[DiffusionPolicy, int], dict[str, float]]


class DemoDataset(Protocol):
    """What training reads. Object-token policies also need ``object_texts`` (the data set's
    object names as embedded text) and items with ``object_poses`` (N, k) and ``object_ids`` (N,)
    (indices into ``object_texts``, -1 = padding)."""

    instructions: Sequence[str]

    def __len__(self) -> int: ...
    def __getitem__(self, i: int) -> dict[str, Any]: ...
    def stats(self) -> dict[str, np.ndarray]: ...
    def set_epoch(self, epoch: int) -> None: ...


@dataclass
class TrainResult:
    """Summary of a run: final step, first/last logged loss, run dir, seconds."""

    step: int
    first_loss: float
    last_loss: float
    run_dir: Path
    seconds: float


class EpochBatches:
    """Batch sampler: epoch-seeded permutation, sharded by rank, starting at batch `start`.

    Deterministic in (seed, epoch), so resuming mid-epoch replays the same batches.
    """

    def __init__(self, n: int, batch_size: int, seed: int, epoch: int, rank: int = 0, world: int = 1, start: int = 0) -> None:
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
        perm = perm[: (n // world) * world]  # every rank the same number of batches: the epochs stay in step
        shard = perm[rank::world].tolist()
        self.batches = [shard[i : i + batch_size] for i in range(0, len(shard) - batch_size + 1, batch_size)][start:]

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def _dist_info() -> tuple[int, int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0"))


def make_loader(dataset: DemoDataset, train_cfg: TrainConfig, step: int, rank: int, world: int, pin_memory: bool = False) -> tuple[DataLoader, int]:
    """This rank's loader for the epoch that holds `step`, from that step's batch on, and the epoch.

    Every rank draws the same epoch permutation (seeded by train_cfg.seed and the epoch) and
    takes its shard perm[rank::world]; the epoch is set on the dataset (augmentation).
    """
    per_epoch = len(EpochBatches(len(dataset), train_cfg.batch_size, train_cfg.seed, 0, rank, world))
    epoch, offset = divmod(step, per_epoch)
    dataset.set_epoch(epoch)
    batches = EpochBatches(len(dataset), train_cfg.batch_size, train_cfg.seed, epoch, rank, world, offset)
    loader = DataLoader(
        dataset, batch_sampler=batches, num_workers=train_cfg.num_workers, pin_memory=pin_memory,
        generator=torch.Generator().manual_seed(train_cfg.seed + epoch),  # keeps the global RNG untouched
    )
    return loader, epoch


def resolve_loss(loss: LossConfig, bandwidth: float | str, multiplier: float, dataset: DemoDataset, net: PolicyNetwork) -> LossConfig:
    """`bandwidth='auto'`: median pairwise distance of normalised action chunks x multiplier (paper rule)."""
    if bandwidth != "auto":
        return replace(loss, bandwidth=float(bandwidth))
    g = np.random.default_rng(0)
    idx = g.choice(len(dataset), size=min(len(dataset), 512), replace=False)
    chunks = torch.stack([dataset[int(i)]["actions"] for i in idx]).to(net.normalizer.action_min.device)
    return replace(loss, bandwidth=median_bandwidth(net.normalizer.normalize_actions(chunks).cpu(), multiplier))


def batch_to_device(batch: dict[str, Any], cameras: Sequence[str], device: torch.device) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    """A data-set batch's ({camera: images}, proprio, actions) on ``device``."""
    images = {cam: batch[cam].to(device, non_blocking=True) for cam in cameras}
    return images, batch["proprio"].to(device, non_blocking=True), batch["actions"].to(device, non_blocking=True)


def object_name_table(dataset: DemoDataset, language: LanguageEncoder, device: torch.device) -> torch.Tensor:
    """(1 + V, lang_dim): a zero row (padding), then the embeddings of the data set's object
    texts (``dataset.object_texts``; an item's ``object_ids`` index them, -1 = padding)."""
    texts = list(getattr(dataset, "object_texts", []))
    return torch.cat([torch.zeros(1, language.dim), language.embed(texts)]).to(device)


def batch_objects(batch: dict[str, Any], table: torch.Tensor, device: torch.device) -> ObjectTokens:
    """A data-set batch's object tokens on ``device``: poses, name embeddings looked up in ``table``
    (:func:`object_name_table`), and the mask of the real objects."""
    ids = batch["object_ids"].to(device, non_blocking=True)
    return ObjectTokens(batch["object_poses"].to(device, non_blocking=True), table[ids + 1], ids >= 0)


def train(
    policy_cfg: PolicyConfig,
    train_cfg: TrainConfig,
    loss: LossConfig,
    dataset: DemoDataset,
    run_dir: str | Path,
    resume: bool = False,
    eval_fn: EvalFn | None = None,
    progress: bool = True,
    wandb_config: dict[str, Any] | None = None,
    bandwidth: float | str = 1.0,
    bandwidth_multiplier: float = 1.0,
    language: LanguageEncoder | None = None,
    stop_after: int | None = None,
    latest_in: str | Path | None = None,
) -> TrainResult:
    """Train the policy and export the EMA weights to ``run_dir/policy``.

    Args:
        loss: the scoring-rule loss (energy m=16, MSE m=1, kernels...).
        resume: continue from the newest checkpoint in run_dir/checkpoints.
        eval_fn: called as eval_fn(ema_policy, step) every train_cfg.eval_every steps.
        bandwidth: kernel bandwidth, or 'auto' for the median rule.
        language: a LanguageEncoder to reuse (default: load policy_cfg.language_model).
        stop_after: end this invocation after that step (checkpointing it), e.g. for
            time-limited jobs; the schedule still spans train_cfg.steps.
        latest_in: a runs root whose ``latest`` link is pointed at run_dir once run_dir holds
            a checkpoint (so a run that fails at start never becomes ``latest``).
    """
    rank, world, local_rank = _dist_info()
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    device = torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    run_dir = Path(run_dir)
    if len(dataset) < train_cfg.batch_size * world:
        raise ValueError(f"the data set has {len(dataset)} samples, fewer than batch_size={train_cfg.batch_size} x {world} processes")
    s = _setup(policy_cfg, train_cfg, loss, dataset, run_dir / "checkpoints" if resume else None, device, bandwidth,
               bandwidth_multiplier, language)
    net, ema, opt, sched, loss, language, step = s.net, s.ema, s.opt, s.sched, s.loss, s.language, s.step
    if world > 1 or not resume:  # per-rank noise; a single-process resume keeps the restored RNG (exact)
        torch.manual_seed(train_cfg.seed * 7919 + step * 31 + rank)
    model: torch.nn.Module = net
    if world > 1:
        model = torch.nn.parallel.DistributedDataParallel(net, device_ids=[local_rank] if device.type == "cuda" else None)

    main = rank == 0
    logger = _Logger(run_dir, train_cfg, main, wandb_config, start_step=step) if main else None
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" and train_cfg.bf16 else nullcontext()
    bar = tqdm(total=train_cfg.steps, initial=step, desc="train", disable=not (progress and main), dynamic_ncols=True)
    first = last = math.nan
    start = time.time()
    tick = time.time()
    ema_policy = DiffusionPolicy(policy_cfg, language, ema.model, device)
    table = object_name_table(dataset, language, device) if policy_cfg.objects else None
    end = train_cfg.steps if stop_after is None else min(stop_after, train_cfg.steps)
    while step < end:
        loader, epoch = make_loader(dataset, train_cfg, step, rank, world, pin_memory=device.type == "cuda")
        for batch in loader:
            images, proprio, actions = batch_to_device(batch, policy_cfg.cameras, device)
            lang = language.embed(batch["language"], device)
            objects = batch_objects(batch, table, device) if table is not None else None
            with autocast:
                terms = model(images, proprio, lang, actions, loss, train_cfg.time_eps, _weighting(train_cfg),
                              train_cfg.weight_bias, objects)
            loss_value = terms.loss.float().mean()
            # NonFiniteError (a ValueError the script prints in one line): close the bar first
            grad_norm = optimizer_step(loss_value, net, opt, sched, ema, train_cfg.grad_clip, step + 1, on_error=bar.close)
            step += 1
            bar.update(1)
            if step % train_cfg.log_every == 0 or step == end:
                stats = {
                    "loss": loss_value.item(),
                    "confinement": terms.confinement.float().mean().item(),
                    "interaction": terms.interaction.float().mean().item(),
                }
                first = stats["loss"] if math.isnan(first) else first
                last = stats["loss"]
                bar.set_postfix(loss=f"{stats['loss']:.4f}", conf=f"{stats['confinement']:.4f}", inter=f"{stats['interaction']:.4f}")
                if logger is not None:
                    dt = (time.time() - tick) / train_cfg.log_every
                    tick = time.time()
                    logger.log(step, {**stats, "grad_norm": float(grad_norm), "lr": sched.get_last_lr()[0], "step_time_s": dt, "epoch": epoch})
            if main:
                _checkpoint_and_evaluate(step, end, train_cfg, s, ema_policy, run_dir, latest_in, eval_fn, logger)
            if step >= end:
                break
    bar.close()
    if logger is not None:
        logger.close()
    if world > 1:
        dist.barrier()
    return TrainResult(step, first, last, run_dir, time.time() - start)


@dataclass
class _Setup:
    """What training updates: the network, its EMA, optimiser and schedule, the resolved loss,
    the language encoder, and the step reached (0, or the resumed checkpoint's)."""

    net: PolicyNetwork
    ema: EMA
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LRScheduler
    loss: LossConfig
    language: LanguageEncoder
    step: int


def _setup(policy_cfg: PolicyConfig, train_cfg: TrainConfig, loss: LossConfig, dataset: DemoDataset,
           resume_from: Path | None, device: torch.device, bandwidth: float | str, bandwidth_multiplier: float,
           language: LanguageEncoder | None) -> _Setup:
    """Build (or, with ``resume_from`` = the checkpoints folder, restore) the training state;
    every rank builds the same initial network from ``train_cfg.seed``."""
    torch.manual_seed(train_cfg.seed)  # identical initialisation on every rank
    language = language if language is not None else LanguageEncoder(policy_cfg.language_model)
    language.embed(dataset.instructions)  # fill the cache once (saved with the policy)
    language.embed(getattr(dataset, "object_texts", []))  # and the object names (object-token policies)
    net = PolicyNetwork(policy_cfg, language.dim)
    net.normalizer.set_stats(dataset.stats())
    net.to(device).train()
    loss = resolve_loss(loss, bandwidth, bandwidth_multiplier, dataset, net)
    ema = EMA(net, train_cfg.ema_decay)
    opt = torch.optim.AdamW(net.parameters(), lr=train_cfg.lr, betas=train_cfg.betas, weight_decay=train_cfg.weight_decay)
    sched = cosine_warmup_scheduler(opt, train_cfg.steps, train_cfg.warmup_steps, train_cfg.min_lr_ratio)
    step = 0
    if resume_from is not None:
        ckpts = list_checkpoints(resume_from)
        if not ckpts:
            raise FileNotFoundError(f"resume=true but {resume_from} holds no checkpoint; start without resume")
        step = load_checkpoint(ckpts[-1], net, ema.model, opt, sched, device).step
        ema.updates = step  # one EMA update per step: the warm-up resumes where it was
    return _Setup(net, ema, opt, sched, loss, language, step)


def _checkpoint_and_evaluate(step: int, end: int, cfg: TrainConfig, s: _Setup, ema_policy: DiffusionPolicy,
                             run_dir: Path, latest_in: str | Path | None, eval_fn: EvalFn | None,
                             logger: "_Logger | None") -> None:
    """Rank 0, after each step: checkpoint (and export the EMA policy) every ``checkpoint_every``
    steps and at the end; evaluate every ``eval_every`` steps."""
    if step % cfg.checkpoint_every == 0 or step == end:
        save_checkpoint(run_dir / "checkpoints", step, s.net, s.ema.model, s.opt, s.sched, cfg.keep_checkpoints)
        ema_policy.save_pretrained(run_dir / "policy", step=step)
        if latest_in is not None:
            link_latest(Path(latest_in), run_dir)
    if eval_fn is not None and cfg.eval_every and step % cfg.eval_every == 0:
        results = eval_fn(ema_policy, step)
        if logger is not None:
            logger.log(step, {f"eval/{k}": v for k, v in results.items()})


def _weighting(cfg: TrainConfig) -> Weighting:
    return "sigmoid" if cfg.weighting == "sigmoid" else "none"


def trim_metrics(path: Path, last_step: int) -> None:
    """Keep only the lines of ``path`` (metrics.jsonl) logged at steps <= ``last_step``: a
    run killed after its last checkpoint logged steps that the resumed run logs again, and a
    run killed before its first checkpoint starts over (``last_step`` 0). Unreadable lines (a
    write cut short) go too. Atomic rewrite; no file, nothing to do."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if int(json.loads(line)["step"]) <= last_step:
                kept.append(line + "\n")
        except (ValueError, KeyError, TypeError):
            continue
    atomic_write_text(path, "".join(kept))


class _Logger:
    """metrics.jsonl (one JSON object per line, continued from ``start_step``) + wandb (offline by default)."""

    def __init__(self, run_dir: Path, cfg: TrainConfig, main: bool, wandb_config: dict[str, Any] | None,
                 start_step: int = 0) -> None:
        run_dir.mkdir(parents=True, exist_ok=True)
        trim_metrics(run_dir / "metrics.jsonl", start_step)
        self.file = open(run_dir / "metrics.jsonl", "a", encoding="utf-8")
        self.wandb = None
        mode = os.environ.get("WANDB_MODE", cfg.wandb_mode)
        if main and mode != "disabled":
            import wandb  # lazy: slow import, and not needed when disabled

            try:
                self.wandb = wandb.init(project=cfg.wandb_project, dir=str(run_dir), mode=mode, config=wandb_config or {},
                                        name=run_dir.name)
            except wandb.errors.Error as exc:  # e.g. online without an API key
                reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                raise ValueError(f"wandb could not start in {mode} mode: {reason} "
                                 "(log in with `wandb login`, or pass train.wandb_mode=offline or disabled)") from None

    def log(self, step: int, values: dict[str, float]) -> None:
        self.file.write(json.dumps({"step": step, **values}) + "\n")
        self.file.flush()
        if self.wandb is not None:
            self.wandb.log(values, step=step)

    def close(self) -> None:
        self.file.close()
        if self.wandb is not None:
            self.wandb.finish()
