"""Atomic, pickle-free training checkpoints and exact resume.

A checkpoint is a folder ``checkpoints/step_XXXXXXXX/`` holding
  * ``model.safetensors`` and ``ema.safetensors`` (network weights incl. normaliser),
  * ``optimizer.pt``: AdamW + LR-schedule state (torch.save of tensors/numbers only,
    loaded back with ``weights_only=True``, so no pickled code),
  * ``rng.safetensors``: the torch CPU (and CUDA) generator states,
  * ``trainer_state.json``: step and format version.
It is written into a hidden temp folder and renamed into place, so a crash never leaves
a half checkpoint; only the last ``keep`` checkpoints are kept.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from policy.model.policy import load_state_strict
from policy.utils import atomic_dir, atomic_save_safetensors, atomic_write, atomic_write_json, read_safetensors

PREFIX = "step_"


@dataclass
class TrainState:
    """What a checkpoint restores besides tensors: the optimiser step count."""

    step: int


def list_checkpoints(ckpt_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    if not ckpt_dir.is_dir():
        return []
    done = [p for p in ckpt_dir.iterdir() if p.is_dir() and p.name.startswith(PREFIX) and (p / "trainer_state.json").is_file()]
    return sorted(done, key=lambda p: int(p.name[len(PREFIX) :]))


def save_checkpoint(
    ckpt_dir: Path,
    step: int,
    model: torch.nn.Module,
    ema_model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    keep: int,
) -> Path:
    """Write checkpoint `step` atomically and prune to the last `keep`. Returns its folder."""
    final = ckpt_dir / f"{PREFIX}{step:08d}"
    with atomic_dir(final) as tmp:
        atomic_save_safetensors(model.state_dict(), tmp / "model.safetensors")
        atomic_save_safetensors(ema_model.state_dict(), tmp / "ema.safetensors")
        atomic_write(tmp / "optimizer.pt",
                     lambda f: torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, f))
        rng = {"torch_cpu": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng.update({f"torch_cuda_{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
        atomic_save_safetensors(rng, tmp / "rng.safetensors")
        atomic_write_json(tmp / "trainer_state.json", {"step": step, "format_version": 1})
    for old in list_checkpoints(ckpt_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(
    ckpt: Path,
    model: torch.nn.Module,
    ema_model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    device: torch.device,
) -> TrainState:
    """Restore model, EMA, optimiser, schedule and RNG state from a checkpoint folder."""
    for name in ("model.safetensors", "ema.safetensors", "optimizer.pt", "rng.safetensors", "trainer_state.json"):
        if not (ckpt / name).is_file():
            raise FileNotFoundError(f"checkpoint {ckpt} lacks {name}; it is incomplete, delete it to resume from an older one")
    for name, module in (("model.safetensors", model), ("ema.safetensors", ema_model)):
        load_state_strict(module, read_safetensors(ckpt / name, str(device))[0], str(ckpt / name))
    opt_state = torch.load(ckpt / "optimizer.pt", map_location=device, weights_only=True)
    optimizer.load_state_dict(opt_state["optimizer"])
    scheduler.load_state_dict(opt_state["scheduler"])
    rng = read_safetensors(ckpt / "rng.safetensors")[0]
    torch.set_rng_state(rng["torch_cpu"])
    if torch.cuda.is_available():
        states = [rng[k] for k in sorted(rng) if k.startswith("torch_cuda_")]
        if len(states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(states)
    step = int(json.loads((ckpt / "trainer_state.json").read_text())["step"])
    return TrainState(step=step)
