"""Training: overfitting, exact resume, checkpoints, Hydra composition, the script (DDP: test_ddp.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from envs.libero.dataset import LiberoDataset, write_synthetic_suite
from policy.model.language import LanguageEncoder
from policy.model.policy import DiffusionPolicy
from policy.training.loop import train
from policy.training.checkpoint import list_checkpoints
from policy.training.config import compose_config, split_config

REPO = Path(__file__).resolve().parents[2]


torch.set_num_threads(1)  # the test machine has 2 shared cores


@pytest.fixture(scope="module")
def language() -> LanguageEncoder:
    return LanguageEncoder()


@pytest.fixture(scope="module")
def synthetic_suite(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two tasks x two demos x 20 steps, 32x32 images, official layout."""
    folder = tmp_path_factory.mktemp("synthetic") / "libero_syn"
    write_synthetic_suite(folder, n_tasks=2, n_demos=2, length=20, size=32)
    return folder


TINY_OVERRIDES = [
    "model.image_size=32", "model.resnet_widths=[8,16,32,64]", "model.d_model=64", "model.decoder_layers=2",
    "train.num_workers=0", "train.wandb_mode=disabled", "train.batch_size=8", "train.warmup_steps=5",
]


def _configs(*overrides: str):
    return split_config(compose_config([*TINY_OVERRIDES, *overrides]))


def _chunk_error(policy: DiffusionPolicy, ds: LiberoDataset) -> tuple[float, float]:
    """Mean |predicted - demo| chunk error, and that of always predicting the mean chunk."""
    items = [ds[i] for i in range(len(ds))]
    obs = {c: np.stack([it[c].permute(1, 2, 0).numpy() for it in items]) for c in ("agentview_rgb", "eye_in_hand_rgb")}
    obs["joint_states"] = np.stack([it["proprio"][:7].numpy() for it in items])
    obs["gripper_states"] = np.stack([it["proprio"][7:].numpy() for it in items])
    obs["language"] = [it["language"] for it in items]
    target = np.stack([it["actions"].numpy() for it in items])
    pred = policy.predict(obs, steps=2, generator=torch.Generator().manual_seed(0))
    return float(np.abs(pred - target).mean()), float(np.abs(target - target.mean(0)).mean())


def test_overfit_tiny_suite(tmp_path: Path, language: LanguageEncoder) -> None:
    folder = tmp_path / "one_task"
    write_synthetic_suite(folder, n_tasks=1, n_demos=1, length=16, size=32)
    ds = LiberoDataset(folder, augment=False, progress=False)
    p, t, loss, bw, mult = _configs("loss=energy", "loss.population=4", "train.steps=120", "train.lr=1e-2",
                                    "train.log_every=20", "train.ema_decay=0.9", "train.checkpoint_every=1000")
    result = train(p, t, loss, ds, tmp_path / "run", language=language, progress=False)
    losses = [json.loads(line)["loss"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 6 and result.step == 120
    assert np.mean(losses[-2:]) < 0.7 * losses[0], losses
    trained = DiffusionPolicy.from_pretrained(tmp_path / "run")
    err, baseline = _chunk_error(trained, ds)
    untrained = DiffusionPolicy(p, language)
    untrained.net.normalizer.set_stats(ds.stats())
    err0, _ = _chunk_error(untrained, ds)
    assert err < 0.8 * baseline and err < 0.8 * err0, (err, baseline, err0)


def test_ema_warm_up_follows_a_short_run() -> None:
    """Without warm-up, 300 updates at decay 0.999 left the average 74% the initialisation."""
    from policy.training.optim import EMA

    assert [EMA(torch.nn.Linear(1, 1), 0.999, updates=n).current_decay() for n in (0, 90, 10**6)] == [0.1, 0.91, 0.999]
    torch.manual_seed(0)
    net = torch.nn.Linear(8, 8)
    init = torch.cat([q.detach().clone().reshape(-1) for q in net.parameters()])
    ema = EMA(net, 0.999)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    x, y = torch.randn(64, 8), torch.randn(64, 8)
    for _ in range(300):
        opt.zero_grad()
        ((net(x) - y) ** 2).mean().backward()
        opt.step()
        ema.update(net)
    trained = torch.cat([q.detach().reshape(-1) for q in net.parameters()])
    averaged = torch.cat([q.reshape(-1) for q in ema.model.parameters()])
    assert ema.updates == 300
    assert (averaged - trained).norm() < 0.05 * (init - trained).norm()


def test_exported_ema_policy_is_close_to_the_trained_weights(tmp_path: Path, synthetic_suite: Path,
                                                             language: LanguageEncoder) -> None:
    from policy.model.network import PolicyNetwork

    ds = LiberoDataset(synthetic_suite, augment=False, progress=False)
    p, t, loss, _, _ = _configs("loss=mse", "train.steps=40", "train.checkpoint_every=40", "train.log_every=40")
    assert t.ema_decay == 0.999
    train(p, t, loss, ds, tmp_path / "run", language=language, progress=False)
    torch.manual_seed(t.seed)  # train() builds its network right after this seed
    init = PolicyNetwork(p, language.dim).state_dict()
    trained = load_file(tmp_path / "run" / "checkpoints" / "step_00000040" / "model.safetensors")
    exported = load_file(tmp_path / "run" / "policy" / "model.safetensors")
    keys = [k for k, v in init.items() if v.is_floating_point() and "normalizer" not in k]
    gap = torch.cat([(exported[k] - trained[k]).reshape(-1) for k in keys]).norm()
    moved = torch.cat([(init[k] - trained[k]).reshape(-1) for k in keys]).norm()
    assert gap < 0.5 * moved, (float(gap), float(moved))


def test_resume_is_exact_on_cpu(tmp_path: Path, synthetic_suite: Path, language: LanguageEncoder) -> None:
    ds = LiberoDataset(synthetic_suite, augment=True, progress=False)  # 80 samples, 13 batches of 6 per epoch
    args = ("loss=energy", "loss.population=4", "train.steps=20", "train.batch_size=6", "train.checkpoint_every=5",
            "train.keep_checkpoints=2", "train.log_every=5", "model.dropout=0.1")
    p, t, loss, _, _ = _configs(*args)
    train(p, t, loss, ds, tmp_path / "straight", language=language, progress=False)
    train(p, t, loss, ds, tmp_path / "split", language=language, progress=False, stop_after=10)
    assert [c.name for c in list_checkpoints(tmp_path / "split" / "checkpoints")] == ["step_00000005", "step_00000010"]
    train(p, t, loss, ds, tmp_path / "split", language=language, progress=False, resume=True)
    a = tmp_path / "straight" / "checkpoints" / "step_00000020"
    b = tmp_path / "split" / "checkpoints" / "step_00000020"
    for name in ("model.safetensors", "ema.safetensors"):
        wa, wb = load_file(a / name), load_file(b / name)
        assert wa.keys() == wb.keys()
        for k in wa:
            assert torch.equal(wa[k], wb[k]), f"{name}:{k} differs after resume"
    # checkpoints: last K kept, no temp folders, optimizer state loads without pickle
    ckpts = sorted(p.name for p in (tmp_path / "straight" / "checkpoints").iterdir())
    assert ckpts == ["step_00000015", "step_00000020"]
    state = torch.load(a / "optimizer.pt", weights_only=True)
    assert state["scheduler"]["last_epoch"] == 20
    metrics = [json.loads(x) for x in (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [5, 10, 15, 20] and all(np.isfinite(m["loss"]) for m in metrics)
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        train(p, t, loss, ds, tmp_path / "fresh", language=language, progress=False, resume=True)


def test_hydra_overrides_compose() -> None:
    cfg = compose_config(["suite=libero_10", "loss=energy", "loss.lam=0.5", "loss.beta=1"])
    p, t, loss, bw, _ = split_config(cfg)
    assert (loss.kind, loss.lam, loss.beta, loss.population) == ("energy", 0.5, 1.0, 16)
    assert p.suites == ("libero_10",) and p.image_size == 64 and cfg.suite.max_steps.libero_10 == 520
    p, t, loss, _, _ = split_config(compose_config(["suite=libero_4", "loss=mse", "model=paper", "train.steps=7"]))
    assert loss.is_classical and loss.population == 1
    assert p.suites == ("libero_spatial", "libero_object", "libero_goal", "libero_10")
    assert p.resnet_widths == (64, 128, 256, 512) and t.steps == 7 and t.batch_size == 32
    for kernel in ("rbf", "imq", "exp"):
        _, _, loss, bw, _ = split_config(compose_config([f"loss=kernel_{kernel}"]))
        assert loss.kind == kernel and bw == "auto"
    with pytest.raises(ValueError, match="bad config override"):
        compose_config(["suite=libero_nope"])
    with pytest.raises(ValueError, match="lambda"):
        split_config(compose_config(["loss.lam=2"]))
    with pytest.raises(ValueError, match="unknown field"):
        split_config(compose_config(["+model.bogus=1"]))


def _script(*args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "scripts" / "train_policy.py"), *args], cwd=cwd, capture_output=True,
                          text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})


def test_script_run_layout_and_missing_data(tmp_path: Path, synthetic_suite: Path) -> None:
    missing = _script("suite=libero_goal", cwd=tmp_path)
    assert missing.returncode != 0
    assert "generate_demos.py --suite libero_goal" in missing.stderr and "Traceback" not in missing.stderr
    run = _script("suite=libero_10", f"suite.data_dirs=[{synthetic_suite}]", *TINY_OVERRIDES, "train.steps=3",
                  "train.log_every=1", "loss.population=2", cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "done: 3 steps" in run.stdout
    latest = tmp_path / "runs" / "latest"
    assert latest.is_symlink() and latest.resolve().parent == (tmp_path / "runs" / "libero_10").resolve()
    for name in ("config.yaml", "metrics.jsonl", "policy/config.json", "policy/model.safetensors", "checkpoints/step_00000003"):
        assert (latest / name).exists(), name
    assert DiffusionPolicy.from_pretrained(latest).config.suites == ("libero_10",)
    mask = os.umask(0o022)
    os.umask(mask)  # checkpoints and the exported policy are readable under the umask, not 0600
    for name in ("checkpoints/step_00000003/model.safetensors", "checkpoints/step_00000003/optimizer.pt",
                 "checkpoints/step_00000003/trainer_state.json", "policy/model.safetensors", "policy/config.json"):
        assert (latest / name).stat().st_mode & 0o777 == 0o666 & ~mask, name
    assert (latest / "checkpoints/step_00000003").stat().st_mode & 0o777 == 0o777 & ~mask
    assert json.loads((latest / "policy/config.json").read_text())["train_step"] == 3
    # a run that fails at start (wandb online without a key) says so in one line and leaves runs/latest alone
    good = latest.resolve()
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    failed = subprocess.run([sys.executable, str(REPO / "scripts" / "train_policy.py"), "suite=libero_10",
                             f"suite.data_dirs=[{synthetic_suite}]", *TINY_OVERRIDES, "train.wandb_mode=online",
                             "train.steps=3"], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                            env={**env, "OMP_NUM_THREADS": "1", "WANDB_API_KEY": "", "HOME": str(tmp_path)},
                            stdin=subprocess.DEVNULL)
    assert failed.returncode != 0 and "Traceback" not in failed.stderr, failed.stderr[-2000:]
    assert "error: wandb could not start in online mode" in failed.stderr and "train.wandb_mode=offline" in failed.stderr
    assert latest.resolve() == good
    # resume=true continues runs/latest with its own config; group changes are refused
    refused = _script("resume=true", "loss=mse", cwd=tmp_path)
    assert refused.returncode != 0 and "keeps the run's suite/loss/model" in refused.stderr
    # a run killed after its checkpoint at step 3 had logged step 4 and half a line: both go
    with open(latest / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"step": 4, "loss": 9.9}) + "\n" + '{"step": 5, "lo')
    resumed = _script("resume=true", "train.steps=5", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "done: 5 steps" in resumed.stdout
    steps = [json.loads(x)["step"] for x in (latest / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5]


def test_trim_metrics_keeps_the_steps_up_to_the_checkpoint(tmp_path: Path) -> None:
    from policy.training.loop import trim_metrics

    path = tmp_path / "metrics.jsonl"
    trim_metrics(path, 0)  # no file: nothing to do, nothing written
    assert not path.exists()
    path.write_text("".join(json.dumps({"step": s, "loss": 1.0}) + "\n" for s in (20, 40, 60)) + "not json\n{}\n")
    trim_metrics(path, 40)
    assert [json.loads(x)["step"] for x in path.read_text().splitlines()] == [20, 40]
    trim_metrics(path, 0)  # a fresh start in a run dir whose first attempt never checkpointed
    assert path.read_text() == ""


def test_kernel_bandwidth_auto_is_the_median_rule(synthetic_suite: Path, language: LanguageEncoder) -> None:
    from policy.model.network import PolicyNetwork
    from policy.scoring import median_bandwidth
    from policy.training.loop import resolve_loss

    ds = LiberoDataset(synthetic_suite, augment=False, progress=False)
    p, _, loss, bw, mult = _configs("loss=kernel_imq", "loss.bandwidth_multiplier=0.5")
    assert bw == "auto" and mult == 0.5
    net = PolicyNetwork(p, language.dim)
    net.normalizer.set_stats(ds.stats())
    resolved = resolve_loss(loss, bw, mult, ds, net)
    chunks = net.normalizer.normalize_actions(torch.stack([ds[i]["actions"] for i in range(len(ds))]))
    assert resolved.kind == "imq" and resolved.bandwidth == pytest.approx(median_bandwidth(chunks, 0.5))
    assert resolve_loss(loss, 2.5, 1.0, ds, net).bandwidth == 2.5


def test_ranks_get_the_same_number_of_batches_and_disjoint_shards() -> None:
    """With n not divisible by the world size, every rank still gets as many batches as the
    others (their epochs stay in step) and no sample is in two ranks' shards."""
    from policy.training.loop import EpochBatches

    shards = [EpochBatches(47, 4, seed=0, epoch=3, rank=r, world=2) for r in (0, 1)]
    assert len(shards[0]) == len(shards[1]) == 5
    seen = [set(i for b in s for i in b) for s in shards]
    assert not seen[0] & seen[1]
    assert [len(b) for b in EpochBatches(47, 4, seed=0, epoch=3).batches] == [4] * 11  # one process: as before
