"""Shared training utilities: EMA weights and the cosine-with-warmup learning-rate schedule."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable

import torch
from torch import nn


def cosine_warmup(step: int, total_steps: int, warmup_steps: int, min_ratio: float = 0.0) -> float:
    """Learning-rate multiplier: linear warmup to 1, then cosine decay to min_ratio."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    progress = min(max(progress, 0.0), 1.0)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def cosine_warmup_scheduler(
    optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int, min_ratio: float = 0.0
) -> torch.optim.lr_scheduler.LambdaLR:
    """A LambdaLR following cosine_warmup (its state_dict restores the step on resume)."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: cosine_warmup(s, total_steps, warmup_steps, min_ratio))


class EMA:
    """Exponential moving average of a model's parameters (buffers are copied), with warm-up.

    ``ema.model`` is a frozen copy used for evaluation and export. Update n (0-based) uses
    ``min(decay, (1 + n) / (10 + n))``, the warm-up of diffusers' EMAModel and TensorFlow's
    ExponentialMovingAverage: without it, 300 steps at decay 0.999 leave the exported weights
    about 74% the random initialisation. ``updates`` counts the updates made (a resumed run
    sets it to the restored step).
    """

    def __init__(self, model: nn.Module, decay: float = 0.999, updates: int = 0):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay={decay} must be in [0, 1)")
        self.decay = decay
        self.updates = int(updates)
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    def current_decay(self) -> float:
        """The decay the next update uses."""
        return min(self.decay, (1.0 + self.updates) / (10.0 + self.updates))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """ema <- d * ema + (1 - d) * current, d = current_decay()."""
        weight = 1.0 - self.current_decay()
        for e, p in zip(self.model.parameters(), model.parameters()):
            e.lerp_(p.detach(), weight)
        for e, b in zip(self.model.buffers(), model.buffers()):
            e.copy_(b)
        self.updates += 1

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.model.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.model.load_state_dict(state)


class NonFiniteError(ValueError):
    """A training step met a NaN or inf loss or gradient norm; the message is one line."""


def check_finite(loss: torch.Tensor, step: int, grad_norm: torch.Tensor | float | None = None, label: str = "training") -> None:
    """Stop training when the loss or the gradient norm is NaN or inf (shared by every loop).

    Call it after ``clip_grad_norm_`` (whose return value is ``grad_norm``) and before
    ``optimizer.step()``, so no non-finite value reaches the weights. Both values are tested
    in one ``torch.isfinite``: one host sync per step on a GPU.

    Raises:
        NonFiniteError: ``"<label>: step <step>: the loss is nan ..."`` or
            ``"... the gradient norm is inf ..."``, one line.
    """
    values = loss.detach().float().reshape(-1)
    if grad_norm is not None:
        values = torch.cat([values, torch.as_tensor(grad_norm, dtype=torch.float32, device=values.device).reshape(1)])
    if bool(torch.isfinite(values).all()):
        return
    loss_value = float(values[: loss.numel()].sum())
    if not math.isfinite(loss_value):
        what = f"the loss is {loss_value}"
    else:
        what = f"the gradient norm is {float(values[-1])} (loss {loss_value:.4g})"
    raise NonFiniteError(f"{label}: step {step}: {what}; look for NaN/inf in the data, targets or loss weights, "
                         "or lower the learning rate")


def optimizer_step(
    loss: torch.Tensor, model: nn.Module, optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler, ema: EMA | None, grad_clip: float, step: int,
    label: str = "training", on_error: Callable[[], None] | None = None,
) -> torch.Tensor:
    """The one training step every loop (2D, image, policy) takes after computing its loss:
    backward, global-norm clipping (``grad_clip <= 0``: none, the norm is still measured), the
    non-finite check (before ``optimizer.step``: NaN/inf never reaches the weights), the
    optimiser and schedule steps and the EMA update. Returns the gradient norm before clipping.

    Raises:
        NonFiniteError: as :func:`check_finite`; ``on_error`` (e.g. closing a progress bar) runs first.
    """
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip if grad_clip > 0 else float("inf"))
    try:
        check_finite(loss, step, grad_norm, label)
    except NonFiniteError:
        if on_error is not None:
            on_error()
        raise
    optimizer.step()
    scheduler.step()
    if ema is not None:
        ema.update(model)
    return grad_norm
