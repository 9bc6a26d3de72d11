"""The one Policy protocol: what the policy server serves and what evaluation runs.

``obs`` is a BATCH of policy observations keyed by the features of
:mod:`policy.features` (images (B, H, W, 3) uint8, states (B, n) float32, language a
list of B strings); ``predict`` returns (B, chunk, action_dim) float32 actions in
environment units, (B, 8, 7) for ``DEFAULT_FEATURES``.
"""

from __future__ import annotations

from typing import Any, Mapping, Protocol

import numpy as np


class Policy(Protocol):
    """``reset()`` at the start of an episode; ``predict(obs_batch, steps, churn) -> (B, 8, 7)``."""

    def reset(self) -> None: ...

    def predict(self, obs: Mapping[str, Any], steps: int = 2, churn: float = 0.0) -> np.ndarray: ...


__all__ = ["Policy"]
