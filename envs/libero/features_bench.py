"""Measurements behind ``scripts/bench_features.py``: what the observation features cost.

Side by side on one task's demonstrations and in one process run:

* env steps/s: the camera-less environment an object-token policy evaluates in (resolution 0,
  nothing rendered) against the 64 px fast-rendering one of the small image policy;
* training step time: the object-token preset (``model=objects``) against the small image
  preset (``model=small``), at the same batch size and loss, data loading included (the real
  ``LiberoDataset`` items: decoded images with the random shift, or object poses);
* predict latency (one observation, 2 sampler steps), what an evaluation or a server pays per chunk.

Every time is the minimum (or median, for steps/s) of interleaved repeats, so a busy moment
of the shared machine hits both sides alike.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from envs.evaluation.bench import measure_steps_per_s
from envs.libero.dataset import LiberoDataset
from policy.model.config import PolicyConfig
from policy.model.language import LanguageEncoder
from policy.model.network import PolicyNetwork
from policy.model.policy import DiffusionPolicy
from policy.scoring import LossConfig
from policy.training.loop import batch_objects, batch_to_device, object_name_table

MODELS = {"object_tokens": "objects", "image_small": "small"}  # bench name -> configs/model preset


def policy_config(preset: str) -> PolicyConfig:
    from policy.training.config import compose_config, split_config

    return split_config(compose_config([f"model={preset}", "suite=libero_object"]))[0]


def env_steps_per_s(suite: str, task: int, n_steps: int, repeats: int) -> dict[str, float]:
    """Median env steps/s of one worker: camera-less (object tokens) and 64 px fast rendering (image)."""
    runs: dict[str, list[float]] = {"object_tokens": [], "image_fast": []}
    for _ in range(repeats):
        runs["object_tokens"].append(measure_steps_per_s(suite, task, False, (1,), n_steps, resolution=0)["steps_per_s"]["1"])
        runs["image_fast"].append(measure_steps_per_s(suite, task, True, (1,), n_steps, resolution=64)["steps_per_s"]["1"])
    return {k: round(statistics.median(v), 2) for k, v in runs.items()}


class _Trainer:
    """One preset's network, optimiser and data loader, stepped one batch at a time."""

    def __init__(self, cfg: PolicyConfig, folder: Path, batch: int, language: LanguageEncoder) -> None:
        self.cfg = cfg
        data = LiberoDataset(folder, cfg.chunk_size, augment=bool(cfg.cameras), image_size=cfg.image_size, seed=0,
                             progress=False, spec=cfg.spec)
        language.embed(data.instructions)
        torch.manual_seed(0)
        self.net = PolicyNetwork(cfg, language.dim).train()
        self.net.normalizer.set_stats(data.stats())
        self.opt = torch.optim.AdamW(self.net.parameters(), lr=1e-4)
        self.language = language
        self.table = object_name_table(data, language, torch.device("cpu")) if cfg.objects else None
        self.loader = DataLoader(data, batch_size=batch, shuffle=True, num_workers=0, drop_last=True,
                                 generator=torch.Generator().manual_seed(0))
        self.it = iter(self.loader)
        self.samples = len(data)

    def step(self, loss: LossConfig) -> float:
        """Seconds of one training step: the next batch from the data set, forward, backward, AdamW."""
        t0 = time.perf_counter()
        try:
            batch = next(self.it)
        except StopIteration:
            self.it = iter(self.loader)
            batch = next(self.it)
        images, proprio, actions = batch_to_device(batch, self.cfg.cameras, torch.device("cpu"))
        lang = self.language.embed(batch["language"])
        objects = batch_objects(batch, self.table, torch.device("cpu")) if self.table is not None else None
        value = self.net(images, proprio, lang, actions, loss, objects=objects).loss.float().mean()
        self.opt.zero_grad(set_to_none=True)
        value.backward()
        torch.nn.utils.clip_grad_norm_(self.net.parameters(), 1.0)
        self.opt.step()
        return time.perf_counter() - t0


def train_step_s(folder: Path, batch: int, iters: int, warmup: int, loss: LossConfig) -> dict[str, Any]:
    """Minimum seconds per training step of each preset, the two interleaved step by step."""
    language = LanguageEncoder(PolicyConfig().language_model)
    trainers = {name: _Trainer(policy_config(preset), folder, batch, language) for name, preset in MODELS.items()}
    times: dict[str, list[float]] = {k: [] for k in trainers}
    for i in range(warmup + iters):
        for name, trainer in trainers.items():
            dt = trainer.step(loss)
            if i >= warmup:
                times[name].append(dt)
    params = {k: sum(p.numel() for p in t.net.parameters()) for k, t in trainers.items()}
    return {"train_step_s": {k: round(min(v), 4) for k, v in times.items()}, "parameters": params,
            "samples": trainers["object_tokens"].samples}


def predict_ms(folder: Path, repeats: int) -> dict[str, float]:
    """Minimum ms of one predict (batch 1, 2 sampler steps) of an untrained policy of each preset,
    on the first observation of the data."""
    out = {}
    for name, preset in MODELS.items():
        cfg = policy_config(preset)
        data = LiberoDataset(folder, cfg.chunk_size, augment=False, image_size=cfg.image_size, progress=False,
                             spec=cfg.spec)
        policy = DiffusionPolicy(cfg)
        demo = data.demos[0]
        obs: dict[str, Any] = {cam: demo.images[cam][:1] for cam in cfg.cameras}
        offsets = np.cumsum([0, *(f.size for f in cfg.spec.states)])
        for f, a, b in zip(cfg.spec.states, offsets[:-1], offsets[1:]):
            obs[f.name] = demo.proprio[:1, a:b]
        if cfg.objects:
            obs["object_poses"], obs["object_names"] = demo.objects[:1], [list(demo.object_names)]
        obs["language"] = [demo.language]
        policy.predict(obs)  # warm-up (language cache, allocations)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            policy.predict(obs, steps=2)
            times.append(time.perf_counter() - t0)
        out[name] = round(1000 * min(times), 2)
    return out
