"""Benchmarks of the policy: training-step time and memory of the energy loss (m=16) vs
MSE (m=1) on the same batch and model, and predict() latency vs sampler steps.

The energy loss should cost little more than MSE because the observation encoder (the
bulk of the compute) runs once per data point and only the small denoiser sees the
population (ARCHITECTURE.md section 1). The language embedding is a fixed (cached)
tensor here: BERT is frozen and never runs inside a training step.
"""

from __future__ import annotations

import multiprocessing as mp
import platform
import resource
import statistics
import time
from typing import Any

import numpy as np
import torch

from policy.config import PolicyConfig
from policy.model import PolicyNetwork
from policy.nets.language import LanguageEncoder
from policy.policy import DiffusionPolicy
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
    """Median seconds per training step (forward, backward, AdamW), losses interleaved step by step."""
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
    return {k: statistics.median(v) for k, v in times.items()}


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def _peak_child(cfg_dict: dict[str, Any], batch: int, loss_name: str, steps: int, queue: Any) -> None:
    torch.set_num_threads(torch.get_num_threads())
    cfg = PolicyConfig.from_dict(cfg_dict)
    net, opt = _make(cfg, torch.device("cpu"))
    data = _batch(cfg, batch, torch.device("cpu"))
    before = _rss_mb()
    for _ in range(steps):
        _step(net, opt, data, LOSSES[loss_name], False)
    queue.put(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - before)


def peak_memory_mb(cfg: PolicyConfig, batch: int, device: torch.device, steps: int = 3) -> dict[str, float]:
    """Extra peak memory of training steps over the built model, in MB.

    CUDA: torch.cuda.max_memory_allocated during the steps minus the allocation before.
    CPU: each loss in a fresh process, peak RSS during the steps minus RSS before them
    (activations, gradients, optimiser state).
    """
    out: dict[str, float] = {}
    for name, loss in LOSSES.items():
        if device.type == "cuda":
            net, opt = _make(cfg, device)
            data = _batch(cfg, batch, device)
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            for _ in range(steps):
                _step(net, opt, data, loss, True)
            torch.cuda.synchronize()
            out[name] = (torch.cuda.max_memory_allocated() - base) / 2**20
            del net, opt, data
        else:
            ctx = mp.get_context("spawn")
            queue = ctx.Queue()
            proc = ctx.Process(target=_peak_child, args=(cfg.to_dict(), batch, name, steps, queue))
            proc.start()
            out[name] = float(queue.get(timeout=1200))
            proc.join()
    return out


def predict_latency_ms(cfg: PolicyConfig, steps_list: tuple[int, ...], repeats: int, device: torch.device) -> dict[str, float]:
    """Median predict() latency (ms) for one 128x128 observation, per sampler step count."""
    torch.manual_seed(0)
    language = LanguageEncoder(cache={"put the bowl on the plate": torch.randn(LANG_DIM)})
    policy = DiffusionPolicy(cfg, language, PolicyNetwork(cfg, LANG_DIM), device)
    rng = np.random.default_rng(0)
    obs = {
        "agentview_rgb": rng.integers(0, 256, (1, 128, 128, 3), dtype=np.uint8),
        "eye_in_hand_rgb": rng.integers(0, 256, (1, 128, 128, 3), dtype=np.uint8),
        "joint_states": np.zeros((1, 7), np.float32),
        "gripper_states": np.zeros((1, 2), np.float32),
        "language": ["put the bowl on the plate"],
    }
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
        out[str(steps)] = 1000 * statistics.median(times)
    return out


def device_description(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads"
