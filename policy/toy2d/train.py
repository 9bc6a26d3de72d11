"""Training and evaluation of the 2D experiment (paper Section 6.1, Appendix I.1).

The distributional model (energy loss) and the classical model (MSE: lam=0, beta=2, m=1)
share the network, optimiser, schedule and budget; only the LossConfig differs.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any, Callable

import torch
from torch import Tensor, nn
from tqdm import tqdm

from policy.diffusion import diffusion_loss
from policy.toy2d.mlp import MLPGenerator
from policy.training.optim import EMA, cosine_warmup_scheduler, optimizer_step
from policy.scoring import LossConfig
from policy.toy2d.targets import model_mmd, noise_floor_mmd, posterior_std_metric, sample_model, sample_target


@dataclass
class Toy2DConfig:
    """One 2D experiment. ``quick()`` runs in minutes on 2 CPU cores; ``paper()`` is 100k steps."""

    targets: tuple[str, ...] = ("checkerboard", "mixture")
    steps: int = 100_000
    batch_size: int = 128
    lr: float = 1e-3
    warmup_steps: int = 1000
    grad_clip: float = 1.0
    ema_decay: float = 0.99
    hidden: int = 256
    depth: int = 3
    noise_dim: int = 2
    population: int = 16
    lam: float = 1.0
    beta: float = 1.0
    time_eps: float = 1e-2
    churn: float = 0.0
    nfes: tuple[int, ...] = (1, 2, 5, 10, 50, 100, 1000)
    mmd_samples: int = 4096
    mmd_repeats: int = 5
    seed: int = 0
    threads: int = 1

    @classmethod
    def quick(cls) -> "Toy2DConfig":
        return cls(steps=4000, warmup_steps=200, hidden=128, population=8, nfes=(1, 2, 5, 10, 50, 100), mmd_repeats=2)

    @classmethod
    def medium(cls) -> "Toy2DConfig":
        """20k steps, m=8: what a CPU can afford in well under an hour per target."""
        return cls(steps=20_000, warmup_steps=500, population=8, nfes=(1, 2, 5, 10, 50, 100), mmd_repeats=3)

    @classmethod
    def paper(cls) -> "Toy2DConfig":
        return cls()

    def losses(self) -> dict[str, LossConfig]:
        """The two models compared: the distributional one and the classical one."""
        return {
            "energy": LossConfig(kind="energy", lam=self.lam, beta=self.beta, population=self.population),
            "mse": LossConfig(kind="mse", lam=0.0, beta=2.0, population=1),
        }


Sampler = Callable[[int, torch.Generator], Tensor]
"""``sampler(n, generator) -> (n, D)`` draws n points of the data distribution."""


def train_generator(
    target: str | Sampler, loss: LossConfig, cfg: Toy2DConfig, progress: bool = True, desc: str = "",
    model: nn.Module | None = None, noise_shape: tuple[int, ...] | None = None,
) -> tuple[nn.Module, list[dict[str, float]]]:
    """Train a generator on a point distribution; returns the EMA model and a loss history.

    Args:
        target: a built-in 2D target's name ("checkerboard", "mixture") or any ``sampler(n,
            generator) -> (n, D)`` of your own.
        model: any generator ``G(t (B,), x_t (B, D), xi (B, m, *noise_shape), cond=None) ->
            (B, m, D)`` (default: the paper's MLP for D-dimensional data, built after
            ``torch.manual_seed(cfg.seed)``); ``noise_shape`` defaults to ``model.noise_shape``.

    Raises:
        policy.training.optim.NonFiniteError: the loss or the gradient norm became NaN/inf (one line).
    """
    sample = (lambda n, g: sample_target(target, n, g)) if isinstance(target, str) else target
    torch.manual_seed(cfg.seed)
    if model is None:
        dim = sample(2, torch.Generator().manual_seed(0)).shape[-1] if not isinstance(target, str) else 2
        model = MLPGenerator(dim, cfg.noise_dim, cfg.hidden, cfg.depth)
    noise_shape = tuple(noise_shape if noise_shape is not None else model.noise_shape)
    ema = EMA(model, cfg.ema_decay)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    sched = cosine_warmup_scheduler(opt, cfg.steps, cfg.warmup_steps)
    data_gen = torch.Generator().manual_seed(cfg.seed + 1)
    history: list[dict[str, float]] = []
    desc = desc or f"{target if isinstance(target, str) else getattr(target, '__name__', 'sampler')}/{loss.kind}"
    bar = tqdm(range(cfg.steps), desc=desc, disable=not progress, mininterval=1.0)
    for step in bar:
        x0 = sample(cfg.batch_size, data_gen)
        terms = diffusion_loss(model, x0, None, loss, noise_shape, time_eps=cfg.time_eps)
        value = terms.loss.mean()
        optimizer_step(value, model, opt, sched, ema, cfg.grad_clip, step, desc)
        if step % 100 == 0 or step == cfg.steps - 1:
            rec = {"step": step, "loss": float(value.detach()), "confinement": float(terms.confinement.detach().mean()),
                   "interaction": float(terms.interaction.detach().mean())}
            history.append(rec)
            bar.set_postfix(loss=f"{rec['loss']:.4f}", conf=f"{rec['confinement']:.3f}", inter=f"{rec['interaction']:.3f}")
    return ema.model, history


def run_experiment(
    cfg: Toy2DConfig, progress: bool = True, on_model: Callable[[str, str, MLPGenerator], None] | None = None
) -> dict[str, Any]:
    """Train both models on every target and measure MMD^2 at each NFE.

    Returns:
        {target: {"nfe": [...], "energy": [...], "mse": [...], "noise_floor": f,
                  "train_time_s": {...}, ("posterior_std": {...} for the mixture)},
         "config": {...}, "mmd": {"bandwidth": h, "samples": n, "repeats": r}}
    """
    from policy.toy2d.targets import MMD_BANDWIDTH

    torch.set_num_threads(cfg.threads)
    results: dict[str, Any] = {
        "config": asdict(cfg),
        "mmd": {"bandwidth": MMD_BANDWIDTH, "samples": cfg.mmd_samples, "repeats": cfg.mmd_repeats, "estimator": "unbiased RBF MMD^2"},
    }
    for target in cfg.targets:
        res: dict[str, Any] = {"nfe": list(cfg.nfes), "train_time_s": {}}
        for name, loss in cfg.losses().items():
            t0 = time.perf_counter()
            model, history = train_generator(target, loss, cfg, progress, desc=f"{target}/{name}")
            res["train_time_s"][name] = round(time.perf_counter() - t0, 1)
            res[f"{name}_final_loss"] = history[-1]["loss"]
            res[name] = [model_mmd(model, target, nfe, cfg.mmd_samples, cfg.mmd_repeats, cfg.churn, cfg.seed + 7) for nfe in cfg.nfes]
            if target == "mixture":
                res.setdefault("posterior_std", {})[name] = posterior_std_metric(model)
            if on_model is not None:
                on_model(target, name, model)
        res["noise_floor"] = noise_floor_mmd(target, cfg.mmd_samples, cfg.mmd_repeats, cfg.seed + 7)
        results[target] = res
    return results


def scatter_grid(models: dict[str, Any], target: str, nfes: tuple[int, ...], path: str, n: int = 2000, seed: int = 0) -> None:
    """Save a PNG grid of samples: one row per model (plus the data), one column per NFE."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    g = torch.Generator().manual_seed(seed)
    rows = ["data", *models]
    fig, axes = plt.subplots(len(rows), len(nfes), figsize=(2.2 * len(nfes), 2.2 * len(rows)), squeeze=False)
    for r, name in enumerate(rows):
        for c, nfe in enumerate(nfes):
            ax = axes[r][c]
            pts = sample_target(target, n, g) if name == "data" else sample_model(models[name], n, nfe, generator=g)
            ax.scatter(pts[:, 0], pts[:, 1], s=0.5, alpha=0.5)
            ax.set_xlim(-6, 6)
            ax.set_ylim(-5, 7) if target == "mixture" else ax.set_ylim(-5, 5)
            ax.set_xticks([]), ax.set_yticks([])
            if r == 0:
                ax.set_title(f"NFE {nfe}", fontsize=9)
            if c == 0:
                ax.set_ylabel(name, fontsize=9)
    fig.suptitle(f"{target}: samples by number of sampling steps")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def mmd_plot(results: dict[str, Any], path: str) -> None:
    """Save MMD^2 against NFE (log-log), one panel per target, one line per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    targets = [k for k in results if isinstance(results[k], dict) and "nfe" in results[k]]
    fig, axes = plt.subplots(1, len(targets), figsize=(5 * len(targets), 4), squeeze=False)
    for ax, target in zip(axes[0], targets):
        res = results[target]
        for name, style in (("energy", "o-"), ("mse", "s--")):
            ys = [max(v, 1e-6) for v in res[name]]
            ax.plot(res["nfe"], ys, style, label="distributional (energy)" if name == "energy" else "classical (MSE)")
        ax.axhline(max(res["noise_floor"], 1e-6), color="gray", lw=0.8, ls=":", label="noise floor (data vs data)")
        ax.set_xscale("log"), ax.set_yscale("log")
        ax.set_xlabel("NFE (sampling steps)"), ax.set_ylabel("MMD$^2$ (RBF, h=1)")
        ax.set_title(target)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
