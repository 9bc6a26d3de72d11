"""Typed training configs: wrong types, unknown groups, --cfg job and -m on scripts/train_policy.py."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from envs.libero.dataset import write_synthetic_suite
from policy.model.config import PolicyConfig, TrainConfig
from policy.training.config import compose_config, resume_config, split_config

REPO = Path(__file__).resolve().parents[2]
TINY_OVERRIDES = [  # as in tests/policy/test_training.py
    "model.image_size=32", "model.resnet_widths=[8,16,32,64]", "model.d_model=64", "model.decoder_layers=2",
    "train.num_workers=0", "train.wandb_mode=disabled", "train.batch_size=8", "train.warmup_steps=5",
]


@pytest.mark.parametrize("override, message", [
    ("train.steps=abc", "train.steps='abc' is not an int (configs/train_policy.yaml: train.steps)"),
    ("train.steps=1.5", "train.steps=1.5 is not an int"),
    ("train.lr=abc", "train.lr='abc' is not a float (configs/train_policy.yaml: train.lr)"),
    ("model.d_model=abc", "model.d_model='abc' is not an int (configs/model/small.yaml: model.d_model)"),
    ("train.bf16=maybe", "train.bf16='maybe' is not a bool"),
    ("train.bf16=yes", "train.bf16='yes' is not a bool"),
    ("model.resnet_widths=[8,x,32,64]", "model.resnet_widths[1]='x' is not an int"),
    ("loss.bandwidth=wide", "loss.bandwidth='wide' is not a float or 'auto'"),
])
def test_wrong_types_are_one_line(override: str, message: str) -> None:
    with pytest.raises(ValueError) as info:
        split_config(compose_config([override]))
    text = str(info.value)
    assert message in text and "\n" not in text, text


def test_right_types_pass_and_the_config_stays_typed() -> None:
    cfg = compose_config(["train.lr=1e-4", "train.weight_decay=0", "train.bf16=false", "loss=kernel_rbf"])
    p, t, loss, bandwidth, _ = split_config(cfg)
    assert t.lr == 1e-4 and isinstance(t.weight_decay, float) and t.bf16 is False and bandwidth == "auto"
    with pytest.raises(Exception):
        cfg.train.steps = "abc"  # merged into the structured schema: later assignments are checked too
    with pytest.raises(ValueError, match=r"TrainConfig.steps='abc' is not an int"):
        TrainConfig(steps="abc")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"PolicyConfig.d_model=64.0 is not an int"):
        PolicyConfig(d_model=64.0)  # type: ignore[arg-type]


def test_resumed_config_is_type_checked(tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text(OmegaConf.to_yaml(compose_config(TINY_OVERRIDES)))
    with pytest.raises(ValueError) as info:
        split_config(resume_config(tmp_path, ["resume=true", "train.bf16=maybe"]))
    assert "train.bf16='maybe' is not a bool" in str(info.value) and "config.yaml: train.bf16" in str(info.value)
    assert resume_config(tmp_path, ["train.steps=9"]).train.steps == 9


@pytest.mark.parametrize("override, choices", [
    ("suite=libero_100", ["libero_10", "libero_4", "libero_90", "libero_goal", "libero_object", "libero_spatial"]),
    ("loss=nope", ["energy", "kernel_exp", "kernel_imq", "kernel_rbf", "mse"]),
    ("model=tiny", ["paper", "small"]),
])
def test_unknown_group_option_lists_all_choices(override: str, choices: list[str]) -> None:
    with pytest.raises(ValueError, match="bad config override") as info:
        compose_config([override])
    text = str(info.value)
    assert "\n" not in text and all(c in text for c in choices), text


def _script(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "scripts" / "train_policy.py"), *args], cwd=cwd, capture_output=True,
                          text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_script_type_error_cfg_job_and_multirun(tmp_path: Path) -> None:
    bad = _script("train.steps=abc", cwd=tmp_path)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr, bad.stderr[-2000:]
    assert bad.stderr.strip() == "error: train.steps='abc' is not an int (configs/train_policy.yaml: train.steps)"
    shown = _script("--cfg", "job", "suite=libero_goal", "train.steps=7", cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr[-2000:]
    printed = yaml.safe_load(shown.stdout)
    assert printed["suite"]["name"] == "libero_goal" and printed["train"]["steps"] == 7 and "hydra" not in printed
    assert not (tmp_path / "runs").exists()  # nothing trained, no run dir
    data = tmp_path / "libero_syn"
    write_synthetic_suite(data, n_tasks=2, n_demos=2, length=20, size=32)
    sweep = _script("-m", "loss=energy,mse", f"suite.data_dirs=[{data}]", *TINY_OVERRIDES, "train.steps=2", cwd=tmp_path)
    assert sweep.returncode == 0 and "Traceback" not in sweep.stderr, sweep.stderr[-3000:]
    summary = [x for x in sweep.stdout.splitlines() if x.startswith("job ")]
    assert len(summary) == 2 and "loss=energy" in summary[0] and "loss=mse" in summary[1], sweep.stdout
    runs = sorted((tmp_path / "runs" / "libero_10").iterdir())
    assert len(runs) == 2
    kinds = sorted(yaml.safe_load((r / "config.yaml").read_text())["loss"]["kind"] for r in runs)
    assert kinds == ["energy", "mse"]
    for run in runs:
        assert (run / "policy" / "model.safetensors").is_file() and (run / "policy" / "config.json").is_file(), run
        assert f"policy at {Path('runs', 'libero_10', run.name, 'policy')}" in sweep.stdout
    assert (tmp_path / "runs" / "latest").resolve() == runs[-1].resolve()
