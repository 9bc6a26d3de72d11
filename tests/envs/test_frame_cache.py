"""envs/libero/frame_cache.py: the bounded reader gives the in-RAM reader's items and statistics,
builds its cache once per machine (concurrent processes included), and rebuilds a stale one."""

from __future__ import annotations

import multiprocessing as mp
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from envs.libero.data_sources import open_training_data
from envs.libero.dataset import write_synthetic_suite
from envs.libero.frame_cache import CachedLiberoDataset, build_once, cache_key
from policy.features import DEFAULT_FEATURES, with_objects, with_proprio


@pytest.fixture(scope="module")
def suite(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("fc") / "libero_syn"
    write_synthetic_suite(folder, n_tasks=3, n_demos=2, length=12, size=32)
    return folder


def _same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k, v in a.items():
        if isinstance(v, torch.Tensor):
            assert v.dtype == b[k].dtype and torch.equal(v, b[k]), k
        else:
            assert v == b[k], k


@pytest.mark.parametrize("spec", [DEFAULT_FEATURES, with_proprio(DEFAULT_FEATURES, "eef"), with_objects(DEFAULT_FEATURES, True)],
                         ids=["joints", "eef", "objects"])
def test_bounded_items_and_stats_equal_ram(suite: Path, tmp_path: Path, spec) -> None:
    kw = dict(spec=spec, shift=16, seed=7, image_size=24)
    ram = open_training_data(suite, progress=False, **kw)
    bounded = open_training_data(suite, progress=False, reader="bounded", cache_dir=tmp_path, **kw)
    assert isinstance(bounded, CachedLiberoDataset) and len(bounded) == len(ram) == 3 * 2 * 12
    assert bounded.instructions == ram.instructions and bounded.object_texts == ram.object_texts
    assert bounded.files == ram.files and bounded.shift == ram.shift == 3
    for epoch in (0, 3):
        ram.set_epoch(epoch)
        bounded.set_epoch(epoch)
        for i in range(len(ram)):
            _same(ram[i], bounded[i])
    sr, sb = ram.stats(), bounded.stats()
    assert sr.keys() == sb.keys()
    for k in sr:
        np.testing.assert_array_equal(sr[k], sb[k])
    assert not any(d.images for d in bounded.demos)  # no frame held in memory


def test_workers_pickling_and_no_frames_in_the_pickle(suite: Path, tmp_path: Path) -> None:
    ds = open_training_data(suite, progress=False, reader="bounded", cache_dir=tmp_path, seed=1)
    ds[0]  # opens descriptors, which must not travel
    clone = pickle.loads(pickle.dumps(ds))
    assert len(pickle.dumps(ds)) < 64 * 1024
    _same(ds[17], clone[17])
    sampler = [[0, 5, 9], [3, 7, 20], [70, 1, 33]]
    serial = list(DataLoader(ds, batch_sampler=sampler, num_workers=0))
    for ctx in ("fork", "spawn"):
        parallel = list(DataLoader(ds, batch_sampler=sampler, num_workers=2, multiprocessing_context=ctx))
        for s, p in zip(serial, parallel):
            _same(s, p)


def _build(args: tuple[str, str]) -> str:
    cache_dir, log = args
    from envs.libero.dataset import iter_demo_file

    files = sorted(Path(log).parent.glob("libero_syn/*.hdf5"))

    def demos():
        with open(log, "a") as f:
            f.write(f"{os.getpid()}\n")
        for path in files:
            yield from iter_demo_file(path)

    return str(build_once(cache_dir, {"test": "concurrent"}, demos, DEFAULT_FEATURES.image_keys))


def test_built_once_by_concurrent_processes(suite: Path, tmp_path: Path) -> None:
    log = suite.parent / "builds.log"
    log.unlink(missing_ok=True)
    cache = tmp_path / "cache"
    with mp.get_context("spawn").Pool(3) as pool:
        paths = pool.map(_build, [(str(cache), str(log))] * 3)
    assert len(set(paths)) == 1 and Path(paths[0]).name == cache_key({"test": "concurrent"})
    assert len(log.read_text().split()) == 1  # one builder, the others waited and opened its cache
    assert sorted(p.name for p in cache.iterdir() if p.is_dir()) == [Path(paths[0]).name]  # no temp folder left
    assert _build((str(cache), str(log))) == paths[0] and len(log.read_text().split()) == 1
    stale = cache / f"{cache_key({'test': 'other'})}.tmp-99999999"  # a dead builder's leftovers
    stale.mkdir()
    build_once(cache, {"test": "other"}, lambda: iter(open_training_data(suite, progress=False).demos), ["agentview_rgb"])
    assert not stale.exists()


def test_stale_cache_is_rebuilt(suite: Path, tmp_path: Path) -> None:
    folder = tmp_path / "copy"
    folder.mkdir()
    for f in suite.glob("*.hdf5"):
        (folder / f.name).write_bytes(f.read_bytes())
    first = open_training_data(folder, progress=False, reader="bounded", cache_dir=tmp_path / "c", augment=False)
    other_size = open_training_data(folder, progress=False, reader="bounded", cache_dir=tmp_path / "c", image_size=16)
    assert other_size.cache_path != first.cache_path and other_size[0]["agentview_rgb"].shape == (3, 16, 16)
    write_synthetic_suite(folder, n_tasks=1, n_demos=1, length=12, size=32, seed=5)  # TASK_0 rewritten
    second = open_training_data(folder, progress=False, reader="bounded", cache_dir=tmp_path / "c", augment=False)
    assert second.cache_path != first.cache_path and len(second) == len(first) - 12
    _same(second[0], open_training_data(folder, progress=False, augment=False)[0])


def test_bad_reader_and_unwritable_cache_are_one_line(suite: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"^data.reader='disk' is not one of ram, bounded$"):
        open_training_data(suite, reader="disk")
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ValueError, match=r"data.cache_dir=.* cannot be written .*point data.cache_dir at a local folder"):
        open_training_data(suite, reader="bounded", cache_dir=blocker / "sub", progress=False)


def test_training_runs_from_the_bounded_reader(suite: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from envs.training_cli import main

    monkeypatch.chdir(tmp_path)
    tiny = ["model.image_size=32", "model.resnet_widths=[8,16,32,64]", "model.d_model=64", "model.decoder_layers=2",
            "train.num_workers=0", "train.wandb_mode=disabled", "train.batch_size=8", "train.warmup_steps=5",
            "train.steps=2", "loss=mse"]
    assert main([f"suite.data_dirs=[{suite}]", "data.reader=bounded", f"data.cache_dir={tmp_path / 'cache'}", *tiny]) == 0
    assert (tmp_path / "runs" / "latest" / "policy" / "model.safetensors").is_file()
    assert len([p for p in (tmp_path / "cache").iterdir() if p.is_dir()]) == 1
