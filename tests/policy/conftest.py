"""Shared fixtures of the policy tests: a tiny synthetic suite in the official HDF5
layout and the small model config shrunk further for CPU test speed."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from envs.dataset import LiberoDataset, write_synthetic_suite
from policy.config import PolicyConfig

torch.set_num_threads(1)  # the test machine has 2 shared cores

TINY = dict(
    image_size=32, resnet_widths=(8, 16, 32, 64), d_model=64, n_heads=4, encoder_layers=1, decoder_layers=2, dropout=0.0
)
TINY_OVERRIDES = [
    "model.image_size=32", "model.resnet_widths=[8,16,32,64]", "model.d_model=64", "model.decoder_layers=2",
    "train.num_workers=0", "train.wandb_mode=disabled", "train.batch_size=8", "train.warmup_steps=5",
]


@pytest.fixture(scope="session")
def synthetic_suite(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two tasks x two demos x 20 steps, 32x32 images."""
    folder = tmp_path_factory.mktemp("synthetic") / "libero_syn"
    write_synthetic_suite(folder, n_tasks=2, n_demos=2, length=20, size=32)
    return folder


@pytest.fixture(scope="session")
def synthetic_dataset(synthetic_suite: Path) -> LiberoDataset:
    return LiberoDataset(synthetic_suite, chunk_size=8, augment=False, progress=False)


@pytest.fixture
def tiny_config() -> PolicyConfig:
    return PolicyConfig(suites=("libero_10",), **TINY)

