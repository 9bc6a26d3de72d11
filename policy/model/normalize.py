"""Action and proprioception normalisation, stored in the policy state (safetensors).

Actions are min-max scaled to [-1, 1] per dimension over the training set (paper
Appendix I.3); proprioception (joint_states ++ gripper_states) is z-scored, and so are the
object poses of an object-token policy (per column, over the real objects). The
statistics are registered buffers, so they travel with ``model.safetensors`` and a
loaded policy is self-contained.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch import Tensor, nn

MIN_RANGE = 1e-4  # a dimension whose range is below this (e.g. a constant) is not scaled
MIN_STD = 1e-4

STAT_KEYS = ("action_min", "action_max", "proprio_mean", "proprio_std")
OBJECT_STAT_KEYS = ("object_mean", "object_std")


class Normalizer(nn.Module):
    """Min-max actions to [-1, 1] and z-score proprio (and object poses).

    Args:
        action_dim: 7; proprio_dim: 9; object_dim: values per object row (10), 0 for a policy
            without object tokens (whose state then holds no object buffers).
    """

    def __init__(self, action_dim: int = 7, proprio_dim: int = 9, object_dim: int = 0) -> None:
        super().__init__()
        self.register_buffer("action_min", -torch.ones(action_dim))
        self.register_buffer("action_max", torch.ones(action_dim))
        self.register_buffer("proprio_mean", torch.zeros(proprio_dim))
        self.register_buffer("proprio_std", torch.ones(proprio_dim))
        self.keys = STAT_KEYS
        if object_dim > 0:
            self.register_buffer("object_mean", torch.zeros(object_dim))
            self.register_buffer("object_std", torch.ones(object_dim))
            self.keys = STAT_KEYS + OBJECT_STAT_KEYS

    def set_stats(self, stats: Mapping[str, np.ndarray | Tensor]) -> None:
        """Load dataset statistics (keys ``self.keys``); shapes must match the buffers."""
        for key in self.keys:
            if key not in stats:
                raise ValueError(f"normalisation statistics lack {key!r}; expected keys {self.keys}")
            value = torch.as_tensor(np.asarray(stats[key]), dtype=torch.float32)
            buf = getattr(self, key)
            if value.shape != buf.shape:
                raise ValueError(f"normalisation statistic {key!r} has shape {tuple(value.shape)}, expected {tuple(buf.shape)}")
            if not torch.isfinite(value).all():
                raise ValueError(f"normalisation statistic {key!r} is not finite: {value.tolist()}")
            buf.copy_(value)

    def stats(self) -> dict[str, list[float]]:
        """The statistics as JSON-ready lists."""
        return {k: getattr(self, k).tolist() for k in self.keys}

    def _center_half_range(self) -> tuple[Tensor, Tensor]:
        center = 0.5 * (self.action_max + self.action_min)
        half = 0.5 * (self.action_max - self.action_min)
        return center, torch.where(half < 0.5 * MIN_RANGE, torch.ones_like(half), half)

    def normalize_actions(self, actions: Tensor) -> Tensor:
        """(..., action_dim) environment units -> [-1, 1]."""
        center, half = self._center_half_range()
        return (actions - center) / half

    def unnormalize_actions(self, actions: Tensor) -> Tensor:
        """(..., action_dim) in [-1, 1] -> environment units (inverse of normalize_actions)."""
        center, half = self._center_half_range()
        return actions * half + center

    def normalize_proprio(self, proprio: Tensor) -> Tensor:
        """(..., proprio_dim) -> z-scores."""
        return (proprio - self.proprio_mean) / self.proprio_std.clamp_min(MIN_STD)

    def normalize_objects(self, poses: Tensor) -> Tensor:
        """(..., object_dim) object poses -> z-scores."""
        return (poses - self.object_mean) / self.object_std.clamp_min(MIN_STD)
