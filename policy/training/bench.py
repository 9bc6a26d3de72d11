"""Benchmarks of the policy: training-step time and memory of the energy loss (m=16) vs
MSE (m=1) on the same batch and model, and predict() latency vs sampler steps.

The energy loss should cost little more than MSE because the observation encoder (the
bulk of the compute) runs once per data point and only the small denoiser sees the
population (docs/architecture.md). The language embedding is a fixed (cached)
tensor here: BERT is frozen and never runs inside a training step.
"""

from __future__ import annotations

import platform
import time
from typing import Any

import numpy as np
import torch

from policy.model.config import PolicyConfig
from policy.model.network import PolicyNetwork
from policy.model.language import LanguageEncoder
from policy.model.policy import DiffusionPolicy
from policy.scoring import LossConfig

LANG_DIM = 384  # all-MiniLM-L6-v2
LOSSES = {"mse": LossConfig("mse", 0.0, 2.0, population=1), "energy_m16": LossConfig("energy", 1.0, 1.0, population=16)}


def _batch(cfg: PolicyConfig, batch: int, device: torch.device, seed: int = 0) -> tuple[Any, ...]:
    g = torch.Generator().manual_seed(seed)
    images = {c: torch.randint(0, 256, (batch, 3, cfg.image_size, cfg.image_size), generator=g, dtype=torch.uint8).to(device) for c in cfg.cameras}
    return images, torch.randn(batch, 9, generator=g).to(device), torch.randn(batch, LANG_DIM, generator=g).to(device), (torch.rand(batch, 8, 7, generator=g) * 2 - 1).to(device)


def _make(cfg: PolicyConfig, device: torch.device) -> tuple[PolicyNetwork, torch.optim.Optimizer]:
    torch.manual_seed(0)
    net = PolicyNetwork(cfg, LANG_DIM).to(device).train()
    return net, torch.optim.AdamW(net.parameters(), lr=1e-4)


def _step(net: PolicyNetwork, opt: torch.optim.Optimizer, batch: tuple[Any, ...], loss: LossConfig, bf16: bool) -> None:
    images, proprio, lang, actions = batch
    ctx = torch.autocast("cuda", dtype=torch.bfloat16) if bf16 else torch.autocast("cpu", enabled=False)
    with ctx:
        value = net(images, proprio, lang, actions, loss).loss.float().mean()
    opt.zero_grad(set_to_none=True)
    value.backward()
    torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
    opt.step()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def step_times(cfg: PolicyConfig, batch: int, iters: int, warmup: int, device: torch.device) -> dict[str, float]:
    """Seconds per training step (forward, backward, AdamW): the minimum over `iters` timed
    steps (the least-disturbed one on a shared machine), losses interleaved step by step."""
    net, opt = _make(cfg, device)
    data = _batch(cfg, batch, device)
    bf16 = device.type == "cuda"
    times: dict[str, list[float]] = {k: [] for k in LOSSES}
    for i in range(warmup + iters):
        for name, loss in LOSSES.items():
            _sync(device)
            t0 = time.perf_counter()
            _step(net, opt, data, loss, bf16)
            _sync(device)
            if i >= warmup:
                times[name].append(time.perf_counter() - t0)
    return {k: min(v) for k, v in times.items()}


def saved_activation_mb(net: PolicyNetwork, batch: tuple[Any, ...], loss: LossConfig) -> float:
    """MB of tensors autograd keeps for the backward pass of one step (parameters excluded),
    measured with saved_tensors_hooks (distinct storages counted once)."""
    params = {p.untyped_storage().data_ptr() for p in net.parameters()}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    images, proprio, lang, actions = batch
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        value = net(images, proprio, lang, actions, loss).loss.float().mean()
    value.backward()
    return sum(seen.values()) / 2**20


def peak_memory_mb(cfg: PolicyConfig, batch: int, device: torch.device, steps: int = 3) -> dict[str, float]:
    """Peak training-step memory in MB.

    CUDA: torch.cuda.max_memory_allocated over `steps` AdamW steps (model included).
    CPU (no allocator statistics): parameters + gradients + AdamW moments (4 x the
    parameter bytes) + the activations saved for backward, measured by saved_tensors_hooks.
    """
    out: dict[str, float] = {}
    for name, loss in LOSSES.items():
        net, opt = _make(cfg, device)
        data = _batch(cfg, batch, device)
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            for _ in range(steps):
                _step(net, opt, data, loss, True)
            torch.cuda.synchronize()
            out[name] = torch.cuda.max_memory_allocated() / 2**20
        else:
            param_mb = sum(p.numel() * p.element_size() for p in net.parameters()) / 2**20
            out[name] = 4 * param_mb + saved_activation_mb(net, data, loss)
        del net, opt, data
    return out


def predict_latency_ms(cfg: PolicyConfig, steps_list: tuple[int, ...], repeats: int, device: torch.device) -> dict[str, float]:
    """predict() latency (ms, minimum over `repeats`) for one 128x128 observation, per step count."""
    torch.manual_seed(0)
    language = LanguageEncoder(cache={"put the bowl on the plate": torch.randn(LANG_DIM)})
    policy = DiffusionPolicy(cfg, language, PolicyNetwork(cfg, LANG_DIM), device)
    rng = np.random.default_rng(0)
    obs = cfg.spec.example(1, 128, rng, text="put the bowl on the plate")  # random images, zero states
    out = {}
    for steps in steps_list:
        policy.predict(obs, steps=steps)
        times = []
        for _ in range(repeats):
            _sync(device)
            t0 = time.perf_counter()
            policy.predict(obs, steps=steps)
            _sync(device)
            times.append(time.perf_counter() - t0)
        out[str(steps)] = 1000 * min(times)
    return out


def device_description(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads"
