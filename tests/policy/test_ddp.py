"""DDP: two steps of two gloo ranks equal two single-process steps at the combined batch,
ranks draw disjoint shards that together cover the data set, and the torchrun script runs.

The two-rank checks run real gloo process groups on 127.0.0.1 (a free port picked at run
time, loopback interface only), spawned with torch.multiprocessing, one thread each, on the
code train() runs: train() itself for the gradient check, make_loader for the shards.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

import policy.model.network
from envs.libero.dataset import LiberoDataset, write_synthetic_suite
from policy.model.config import TrainConfig
from policy.diffusion import diffusion_loss
from policy.model.network import PolicyNetwork
from policy.model.language import LanguageEncoder
from policy.model.policy import DiffusionPolicy
from policy.scoring import ScoreTerms
from policy.training.loop import _dist_info, make_loader, train
from policy.training.config import compose_config, split_config

REPO = Path(__file__).resolve().parents[2]

torch.set_num_threads(1)  # the test machine has 2 shared cores

TINY_OVERRIDES = [
    "model.image_size=32", "model.resnet_widths=[8,16,32,64]", "model.d_model=64", "model.decoder_layers=2",
    "train.num_workers=0", "train.wandb_mode=disabled", "train.batch_size=8", "train.warmup_steps=5",
]


@pytest.fixture(scope="module")
def synthetic_suite(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two tasks x two demos x 20 steps (80 samples), 32x32 images, official layout."""
    folder = tmp_path_factory.mktemp("synthetic") / "libero_syn"
    write_synthetic_suite(folder, n_tasks=2, n_demos=2, length=20, size=32)
    return folder


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _join_group_env(rank: int, world: int, port: int) -> None:
    """The environment torchrun gives a rank, on loopback only."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank), OMP_NUM_THREADS="1")
    if sys.platform.startswith("linux"):
        os.environ["GLOO_SOCKET_IFNAME"] = "lo"
    torch.set_num_threads(1)


def _spawn(fn: Any, world: int, *args: Any) -> None:
    mp.spawn(fn, args=(world, _free_port(), *args), nprocs=world, join=True)


# ---------------------------------------------------------------- (a) gradients are averaged


def _row_key(row: torch.Tensor) -> str:
    return hashlib.sha256(row.detach().cpu().contiguous().numpy().tobytes()).hexdigest()


class _Probe:
    """Replaces the diffusion loss with one whose noise is a function of the sample alone.

    Each data point's t, eps and xi are drawn from a generator seeded by a hash of its
    normalised action chunk, one point at a time, so a sample gets the same noise whichever
    rank or batch it lands in. Records which samples were seen and the state of the global
    RNG (the per-rank noise stream train() seeds), and, through global optimizer hooks, the
    gradients entering each optimizer step and the weights after it.
    """

    def __init__(self) -> None:
        self.samples: list[list[str]] = []  # per step
        self.rng_states: list[str] = []
        self.grads: list[list[torch.Tensor]] = []
        self.weights: list[list[torch.Tensor]] = []

    def loss(self, model, x0, cond, loss, noise_shape, *args, **kwargs) -> ScoreTerms:  # noqa: ANN001
        assert isinstance(cond, torch.Tensor) and cond.shape[0] == x0.shape[0]
        self.rng_states.append(hashlib.sha256(torch.get_rng_state().numpy().tobytes()).hexdigest())
        rows = []
        self.samples.append([])
        for i in range(x0.shape[0]):
            key = _row_key(x0[i])
            self.samples[-1].append(key)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(int(key[:12], 16))
                rows.append(diffusion_loss(model, x0[i : i + 1], cond[i : i + 1], loss, noise_shape, *args, **kwargs))
        return ScoreTerms(*(torch.cat(parts) for parts in zip(*rows)))

    def _pre(self, opt: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        self.grads.append([p.grad.detach().clone() for g in opt.param_groups for p in g["params"]])

    def _post(self, opt: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        self.weights.append([p.detach().clone() for g in opt.param_groups for p in g["params"]])

    def hooks(self) -> list[Any]:
        return [register_optimizer_step_pre_hook(self._pre), register_optimizer_step_post_hook(self._post)]

    def result(self) -> dict[str, Any]:
        return {"samples": self.samples, "rng_states": self.rng_states, "grads": self.grads, "weights": self.weights}


LR = 1e-3


def _two_step_configs(batch_size: int):
    """Two steps: at initialisation the zero-initialised adaLN layers stop every gradient
    before the encoder, so only the second step has gradients on all parameters. No clipping:
    it would hide a gradient summed instead of averaged (both clip to the same norm)."""
    p, t, loss, _, _ = split_config(compose_config([
        *TINY_OVERRIDES, "model.dropout=0", "loss=energy", "loss.population=2", "train.steps=2", "train.grad_clip=0",
        "train.warmup_steps=0", f"train.lr={LR}", "train.log_every=1", "train.checkpoint_every=2",
        f"train.batch_size={batch_size}",
    ]))
    return p, t, loss


def _language(folder: Path) -> dict[str, torch.Tensor]:
    """A fixed embedding per instruction (no BERT load in the workers)."""
    g = torch.Generator().manual_seed(0)
    return {text: torch.randn(32, generator=g) for text in LiberoDataset(folder, augment=False, progress=False).instructions}


def _train_two_steps(rank: int, world: int, port: int, folder: Path, batch_size: int, cache: dict, out: Path) -> None:
    _join_group_env(rank, world, port)
    probe = _Probe()
    policy.model.network.diffusion_loss = probe.loss  # PolicyNetwork.forward looks it up at call time
    probe.hooks()
    p, t, loss = _two_step_configs(batch_size)
    ds = LiberoDataset(folder, augment=False, progress=False)
    try:
        train(p, t, loss, ds, out / "ddp", language=LanguageEncoder(cache=cache), progress=False)
        torch.save(probe.result(), out / f"rank{rank}.pt")
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def test_ddp_steps_equal_single_process_steps_on_the_combined_batch(tmp_path: Path, synthetic_suite: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """2 ranks x batch 4 through train() == 1 process x batch 8 through train(): same samples and noise, two steps."""
    cache = _language(synthetic_suite)
    _spawn(_train_two_steps, 2, synthetic_suite, 4, cache, tmp_path)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]

    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    probe = _Probe()
    monkeypatch.setattr(policy.model.network, "diffusion_loss", probe.loss)
    handles = probe.hooks()
    try:
        p, t, loss = _two_step_configs(8)
        ds = LiberoDataset(synthetic_suite, augment=False, progress=False)
        train(p, t, loss, ds, tmp_path / "single", language=LanguageEncoder(cache=cache), progress=False)
    finally:
        for h in handles:
            h.remove()
    single = probe.result()
    names = [n for n, _ in PolicyNetwork(p, 32).named_parameters()]
    assert len(single["grads"]) == len(single["weights"]) == 2 and len(single["grads"][1]) == len(names)
    assert all(len(r["grads"]) == len(r["weights"]) == 2 for r in ranks)

    for step in range(2):
        # the data: each rank its own 4 samples, together the 8 of the single-process batch
        a, b = (set(r["samples"][step]) for r in ranks)
        assert len(a) == len(b) == 4, f"step {step + 1}: each rank should train on 4 distinct samples"
        assert not a & b, f"step {step + 1}: ranks 0 and 1 trained on {len(a & b)} common samples (data not sharded by rank)"
        assert a | b == set(single["samples"][step]), f"step {step + 1}: the ranks' batches are not the combined batch"

        # the gradients entering the step: identical on both ranks, and those of the combined batch
        for name, g0, g1 in zip(names, ranks[0]["grads"][step], ranks[1]["grads"][step]):
            same = torch.equal(g0, g1)
            assert same, f"step {step + 1}: the ranks step on different gradients for {name} (not all-reduced)"
        # float32 summation order only: 1e-7 at step 1; at step 2 the first convolutions (sums over
        # every pixel) reach 5e-6 per tensor; a rank's own gradient is off by O(1), a sum by 1
        flat_d, flat_s = (torch.cat([g.reshape(-1) for g in r["grads"][step]]) for r in (ranks[0], single))
        assert _rel(flat_d, flat_s) < 1e-5 * (step + 1), f"step {step + 1}: gradient off by {_rel(flat_d, flat_s):.1e} (relative)"
        for name, gd, gs in zip(names, ranks[0]["grads"][step], single["grads"][step]):
            err = _rel(gd, gs) if gs.norm() > 0 else float(gd.norm())
            assert err < (1e-6, 1e-4)[step], f"step {step + 1}: {name}: gradient off by {err:.1e} (relative) from the combined batch's"

        # the weights after the step: identical on both ranks and close to the single-process ones
        for name, w0, w1, ws in zip(names, ranks[0]["weights"][step], ranks[1]["weights"][step], single["weights"][step]):
            same = torch.equal(w0, w1)
            assert same, f"step {step + 1}: {name} differs between the ranks"
            # AdamW moves each weight by about lr x sign(gradient): 1e-2 lr leaves room for float noise only
            torch.testing.assert_close(w0, ws, rtol=0, atol=1e-2 * LR, msg=lambda m: f"step {step + 1}: {name}: {m}")
    # the second step reaches every parameter, so every all-reduce bucket is checked
    zero = [n for n, g in zip(names, single["grads"][1]) if not g.abs().max() > 0]
    assert not zero, f"no gradient at step 2 for {zero}"
    # the noise streams differ across ranks (train() seeds them per rank)
    assert ranks[0]["rng_states"] != ranks[1]["rng_states"], "both ranks draw the same noise"


# ---------------------------------------------------------------- (b) ranks see disjoint data


class _Indices:
    """A data set whose items are their indices (the DemoDataset protocol train() needs)."""

    instructions: list[str] = []

    def __init__(self, n: int) -> None:
        self.n = n
        self.epochs: list[int] = []

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"index": i}

    def stats(self) -> dict[str, Any]:
        return {}

    def set_epoch(self, epoch: int) -> None:
        self.epochs.append(epoch)


def _draw_shards(rank: int, world: int, port: int, sizes: list[int], batch_size: int, out: Path) -> None:
    _join_group_env(rank, world, port)
    dist.init_process_group("gloo")
    try:
        r, w, _ = _dist_info()  # what train() uses
        assert (r, w) == (dist.get_rank(), dist.get_world_size())
        cfg = TrainConfig(batch_size=batch_size, seed=3, num_workers=0)
        mine: dict[str, Any] = {}
        for n in sizes:
            ds = _Indices(n)
            loader, _ = make_loader(ds, cfg, 0, r, w)
            per_epoch = len(loader)
            epochs = []
            for epoch in range(2):
                loader, e = make_loader(ds, cfg, epoch * per_epoch, r, w)
                epochs.append({"epoch": e, "batches": [b["index"].tolist() for b in loader]})
            resumed, e = make_loader(ds, cfg, per_epoch + 2, r, w)  # mid-epoch 1, as on resume
            mine[str(n)] = {"epochs": epochs, "resumed": [b["index"].tolist() for b in resumed], "resumed_epoch": e,
                            "set_epoch": ds.epochs}
        gathered: list[Any] = [None] * w
        dist.all_gather_object(gathered, mine)
        if r == 0:
            (out / "shards.json").write_text(json.dumps(gathered))
    finally:
        dist.destroy_process_group()


def test_ranks_draw_disjoint_shards_covering_the_data(tmp_path: Path) -> None:
    """make_loader under two gloo ranks: each epoch's shards are disjoint, full batches, and cover the data."""
    batch_size = 4
    _spawn(_draw_shards, 2, [40, 45], batch_size, tmp_path)
    ranks = json.loads((tmp_path / "shards.json").read_text())
    for n in ("40", "45"):
        per_rank = [r[n] for r in ranks]
        orders = []
        for epoch in range(2):
            drawn = [[i for batch in r["epochs"][epoch]["batches"] for i in batch] for r in per_rank]
            assert all(r["epochs"][epoch]["epoch"] == epoch for r in per_rank)
            assert all(len(b) == batch_size for r in per_rank for b in r["epochs"][epoch]["batches"])
            assert len(drawn[0]) == len(drawn[1]), "the ranks take different numbers of steps per epoch"
            for d in drawn:
                assert len(set(d)) == len(d), f"n={n} epoch {epoch}: a rank draws a sample twice"
            common = set(drawn[0]) & set(drawn[1])
            assert not common, f"n={n} epoch {epoch}: both ranks draw {sorted(common)}"
            union = set(drawn[0]) | set(drawn[1])
            assert union <= set(range(int(n)))
            if n == "40":  # divisible by world x batch: every sample once per epoch
                assert union == set(range(40)), f"epoch {epoch} misses {sorted(set(range(40)) - union)}"
            else:  # only the last incomplete batch per rank is dropped
                assert int(n) - len(union) < 2 * batch_size
            orders.append(drawn)
        assert orders[0] != orders[1], f"n={n}: epoch 1 repeats epoch 0's order"
        for r in per_rank:  # a mid-epoch start continues the same epoch's batches
            assert r["resumed_epoch"] == 1 and r["resumed"] == r["epochs"][1]["batches"][2:]
            assert r["set_epoch"] == [0, 0, 1, 1]


# ---------------------------------------------------------------- the torchrun script


@pytest.mark.slow
def test_ddp_two_processes_gloo(tmp_path: Path, synthetic_suite: Path) -> None:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
           f"--master_port={_free_port()}",
           str(REPO / "scripts" / "train_policy.py"), f"suite.data_dirs=[{synthetic_suite}]", *TINY_OVERRIDES,
           "train.steps=4", "train.log_every=1", "loss.population=2", "train.batch_size=4"]
    out = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.count("done: 4 steps") == 1  # only rank 0 reports
    latest = tmp_path / "runs" / "latest"
    metrics = [json.loads(x) for x in (latest / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2, 3, 4]
    assert DiffusionPolicy.from_pretrained(latest).predict is not None
