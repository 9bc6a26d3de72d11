"""DiffusionPolicy: observation batch -> action chunk, save_pretrained / from_pretrained.

The policy every harness runs (``policy.protocol.Policy``: ``reset()``,
``predict(obs, steps, churn)``). ``obs`` is a BATCH of policy observations (the output of
envs.libero.observation.process_observation, stacked) keyed by the features the policy was trained
with (``config.spec``, ``policy.features``; by default ``agentview_rgb`` / ``eye_in_hand_rgb``
(B, H, W, 3) uint8 upright, ``joint_states`` (B, 7), ``gripper_states`` (B, 2) float32,
``language`` list[str] of length B). A single unbatched observation (images (H, W, 3),
language str) is accepted as B = 1.

A pretrained directory holds ``config.json`` (architecture + language model name/path),
``model.safetensors`` (weights and normalisation buffers), ``normalization.json``
(the same statistics, human-readable) and ``language_cache.safetensors`` (cached
instruction embeddings, so known instructions need no BERT at all). BERT weights are
never saved; they are loaded from the configured local path when needed.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from policy.diffusion import Generators
from policy.features import LEGACY_FEATURES, describe_state, object_text
from policy.model.config import PolicyConfig
from policy.model.network import ObjectTokens, PolicyNetwork
from policy.model.language import LanguageEncoder
from policy.utils import atomic_save_safetensors, atomic_write_bytes, read_safetensors

FORMAT_VERSION = 1
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
STATS_NAME = "normalization.json"
LANG_CACHE_NAME = "language_cache.safetensors"


def load_state_strict(module: torch.nn.Module, state: Mapping[str, torch.Tensor], where: str) -> None:
    """load_state_dict(strict) with a one-line error naming the file and the first bad keys."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    bad = [k for k in own if k in state and own[k].shape != state[k].shape]
    if missing or unexpected or bad:
        raise ValueError(
            f"{where} does not match the architecture in config.json: missing {missing[:3]}, unexpected "
            f"{unexpected[:3]}, shape mismatch {bad[:3]}"
        )
    module.load_state_dict(state, strict=True)


def legacy_features(fields: Mapping[str, Any]) -> list[dict[str, Any]] | None:
    """The features of a config.json written before they were recorded: LEGACY_FEATURES with its
    cameras, chunk_size and action_dim (None when those fields are unusable: PolicyConfig then
    names the bad field)."""
    try:
        return LEGACY_FEATURES.with_config(fields.get("cameras", PolicyConfig.cameras),
                                           fields.get("chunk_size", PolicyConfig.chunk_size),
                                           fields.get("action_dim", PolicyConfig.action_dim)).to_list()
    except (TypeError, ValueError):
        return None


class DiffusionPolicy:
    """The LIBERO distributional diffusion policy.

    Args:
        config: architecture (``config.suites``, ``config.image_size`` are public).
        language: frozen BERT encoder with its cache (built from config if None).
        net: the trainable network (built from config if None).
        device: where the network runs.
    """

    def __init__(
        self,
        config: PolicyConfig,
        language: LanguageEncoder | None = None,
        net: PolicyNetwork | None = None,
        device: torch.device | str = "cpu",
    ) -> None:
        self.config = config
        self.language = language if language is not None else LanguageEncoder(config.language_model)
        self.net = net if net is not None else PolicyNetwork(config, self.language.dim)
        self.device = torch.device(device)
        self.net.to(self.device).eval()

    def reset(self) -> None:
        """Start of an episode. The policy is stateless between chunks."""

    def to(self, device: torch.device | str) -> DiffusionPolicy:
        self.device = torch.device(device)
        self.net.to(self.device)
        return self

    def observation_tensors(self, obs: Mapping[str, Any]) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor,
                                                                    ObjectTokens | None]:
        """Policy observation batch -> ({camera: (B, 3, H, W) uint8}, proprio (B, 9), language (B, L),
        objects or None) on device.

        Checked against ``config.spec``: every observation feature present, images (B, H, W, 3)
        uint8, each state feature its declared number of values per sample, object poses
        (B, N, 10) with B lists of N names (rows named "" are padding).
        """
        spec = self.config.spec
        expected = list(spec.observation_keys)
        missing = [k for k in expected if k not in obs]
        if missing:
            states = {f.name for f in spec.states}
            layout = f"; this policy expects {describe_state(spec)}" if states & set(missing) else ""
            raise KeyError(f"observation lacks {missing}; expected keys {expected}{layout}")
        language = obs[spec.language.name]
        single = isinstance(language, str)
        texts = [language] if single else list(language)
        images = {}
        for cam in spec.image_keys:
            arr = np.asarray(obs[cam])
            arr = arr[None] if single and arr.ndim == 3 else arr
            if arr.ndim != 4 or arr.shape[-1] != 3 or arr.shape[0] != len(texts):
                raise ValueError(f"observation {cam!r} has shape {arr.shape}; expected (B={len(texts)}, H, W, 3) uint8")
            if arr.dtype != np.uint8:
                raise ValueError(f"observation {cam!r} has dtype {arr.dtype}; expected uint8 (0..255)")
            images[cam] = torch.from_numpy(np.ascontiguousarray(arr)).to(self.device).permute(0, 3, 1, 2)
        parts = []
        for feature in spec.states:  # concatenated in spec order: the proprio vector
            arr = np.asarray(obs[feature.name], dtype=np.float32).reshape(len(texts), -1)
            if arr.shape[1] != feature.size:
                raise ValueError(f"observation {feature.name!r} has {arr.shape[1]} values per sample; expected {feature.size} "
                                 f"(this policy expects {describe_state(spec)})")
            parts.append(arr)
        proprio = torch.from_numpy(np.concatenate(parts, axis=1)).to(self.device)
        objects = self._object_tokens(obs, spec, len(texts), single) if spec.objects else None
        return images, proprio, self.language.embed(texts, self.device), objects

    def _object_tokens(self, obs: Mapping[str, Any], spec: Any, b: int, single: bool) -> ObjectTokens:
        poses_f, names_f = spec.objects
        poses = np.asarray(obs[poses_f.name], dtype=np.float32)
        names = [obs[names_f.name]] if single else obs[names_f.name]
        poses = poses[None] if single and poses.ndim == 2 else poses
        k = poses_f.shape[1]
        if poses.ndim != 3 or poses.shape[0] != b or poses.shape[2] != k:
            raise ValueError(f"observation {poses_f.name!r} has shape {poses.shape}; expected (B={b}, N objects, {k})")
        n = poses.shape[1]
        if (isinstance(names, (str, bytes)) or len(names) != b
                or any(isinstance(row, (str, bytes)) or len(row) != n for row in names)):
            raise ValueError(f"observation {names_f.name!r} must hold B={b} lists of N={n} object names, one per "
                             f"row of {poses_f.name!r}")
        texts = [[object_text(x) if str(x) else "" for x in row] for row in names]
        mask = np.array([[bool(t) for t in row] for row in texts], dtype=bool).reshape(b, n)
        if not np.isfinite(poses[mask]).all():
            raise ValueError(f"observation {poses_f.name!r} holds NaN or inf")
        unique = sorted({t for row in texts for t in row if t})
        table = torch.cat([torch.zeros(1, self.language.dim, device=self.device), self.language.embed(unique, self.device)])
        index = {t: i + 1 for i, t in enumerate(unique)}  # row 0: the zero embedding of padding
        ids = torch.tensor([[index.get(t, 0) for t in row] for row in texts], dtype=torch.long, device=self.device)
        emb = table[ids.reshape(b, n)]
        return ObjectTokens(torch.from_numpy(poses * mask[..., None]).to(self.device), emb,
                            torch.from_numpy(mask).to(self.device))

    @torch.no_grad()
    def predict(self, obs: Mapping[str, Any], steps: int = 2, churn: float = 0.0, generator: Generators = None,
                xi_scale: float = 1.0) -> np.ndarray:
        """Sample one action chunk per observation.

        Args:
            obs: a batch of policy observations (see module docstring).
            steps: sampler steps (NFE); churn: 0 = DDIM, 1 = DDPM posterior.
            generator: the noise: one generator for the batch, or one per observation (then
                each chunk's noise is independent of the batch it was computed in).
            xi_scale: multiplies the generator noise xi (1: as trained; 0: the generator's central
                output for each draw of x; an MSE policy ignores xi, so it changes nothing there).
        Returns:
            (B, 8, 7) float32 actions in environment units (the spec's action shape).
        """
        if not xi_scale >= 0.0:
            raise ValueError(f"xi_scale must be >= 0, got {xi_scale}")
        self.net.eval()
        images, proprio, lang, objects = self.observation_tensors(obs)
        actions = self.net.sample_actions(images, proprio, lang, steps, churn, generator, objects, xi_scale)
        return actions.float().cpu().numpy().astype(np.float32)

    def save_pretrained(self, directory: str | os.PathLike[str], step: int | None = None) -> Path:
        """Write config.json, model.safetensors, normalization.json, language_cache.safetensors.

        ``step`` (the training step of these weights) is recorded in config.json as
        ``train_step`` so results made from the policy can name what produced them. The
        features the policy was trained with are ``config.json["policy"]["features"]``.
        """
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        atomic_save_safetensors(self.net.state_dict(), out / WEIGHTS_NAME, metadata={"format_version": str(FORMAT_VERSION)})
        texts = sorted(self.language.cache)
        if texts:
            emb = torch.stack([self.language.cache[t] for t in texts])
            atomic_save_safetensors({"embeddings": emb}, out / LANG_CACHE_NAME, metadata={"instructions": json.dumps(texts)})
        stats = json.dumps(self.net.normalizer.stats(), indent=2).encode()
        atomic_write_bytes(out / STATS_NAME, stats)
        meta = {"format_version": FORMAT_VERSION, "language_dim": self.language.dim, "policy": self.config.to_dict()}
        if step is not None:
            meta["train_step"] = int(step)
        atomic_write_bytes(out / CONFIG_NAME, json.dumps(meta, indent=2, sort_keys=True).encode())
        return out

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike[str], device: torch.device | str = "cpu") -> DiffusionPolicy:
        """Load a pretrained dir (config.json + model.safetensors) or a training run dir (<run>/policy/).

        A config.json without ``features`` (written before they were recorded) gets
        ``policy.features.LEGACY_FEATURES`` (with its cameras and action shape).
        """
        root = Path(path)
        if not (root / CONFIG_NAME).is_file() and (root / "policy" / CONFIG_NAME).is_file():
            root = root / "policy"
        if not (root / CONFIG_NAME).is_file() or not (root / WEIGHTS_NAME).is_file():
            raise FileNotFoundError(
                f"{path}: no pretrained policy here (need config.json + model.safetensors, or a run dir with policy/); "
                "train one with `python scripts/train_policy.py suite=libero_10`"
            )
        try:
            meta = json.loads((root / CONFIG_NAME).read_text())
            fields = dict(meta["policy"])
            if fields.get("features") is None:
                fields["features"] = legacy_features(fields)
            config = PolicyConfig.from_dict(fields)
            lang_dim = int(meta["language_dim"])
        except (KeyError, ValueError, TypeError) as exc:
            raise ValueError(f"{root / CONFIG_NAME}: not a DiffusionPolicy config ({exc})") from None
        cache: dict[str, torch.Tensor] = {}
        if (root / LANG_CACHE_NAME).is_file():
            tensors, meta = read_safetensors(root / LANG_CACHE_NAME)
            try:
                cache = dict(zip(json.loads(meta.get("instructions", "[]")), tensors["embeddings"]))
            except (KeyError, ValueError) as exc:
                raise ValueError(f"{root / LANG_CACHE_NAME}: not a language cache ({exc}); delete it, the policy "
                                 "embeds its instructions again") from None
        language = LanguageEncoder(config.language_model, cache)
        net = PolicyNetwork(config, lang_dim)
        load_state_strict(net, read_safetensors(root / WEIGHTS_NAME)[0], str(root / WEIGHTS_NAME))
        return cls(config, language, net, device)
