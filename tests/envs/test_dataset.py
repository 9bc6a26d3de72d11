"""envs/libero/dataset.py: the official-layout HDF5 reader, chunks, statistics, augmentation, errors."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from envs.libero.dataset import DatasetError, LiberoDataset, read_demo_file, write_demo_file, write_synthetic_suite


@pytest.fixture(scope="module")
def suite(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("ds") / "libero_syn"
    write_synthetic_suite(folder, n_tasks=2, n_demos=2, length=12, size=32)
    return folder


def _copy_suite(src: Path, dst: Path) -> Path:
    dst.mkdir(parents=True)
    for f in src.glob("*.hdf5"):
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


def test_samples_shapes_upright_and_padding(suite: Path) -> None:
    ds = LiberoDataset(suite, chunk_size=8, augment=False, progress=False)
    assert len(ds) == 2 * 2 * 12 and len(ds.files) == 2
    assert ds.instructions == ["synthetic task 0: move the square", "synthetic task 1: move the square"]
    item = ds[0]
    assert item["agentview_rgb"].shape == (3, 32, 32) and item["agentview_rgb"].dtype == torch.uint8
    assert item["proprio"].shape == (9,) and item["proprio"].dtype == torch.float32
    assert item["actions"].shape == (8, 7) and item["action_mask"].all()
    with h5py.File(ds.files[0]) as f:
        raw = f["data/demo_0/obs/agentview_rgb"][0]
        actions = f["data/demo_0/actions"][()]
        joints = f["data/demo_0/obs/joint_states"][0]
    # process_observation turned the as-rendered image upright (180 degrees)
    np.testing.assert_array_equal(item["agentview_rgb"].permute(1, 2, 0).numpy(), raw[::-1, ::-1])
    np.testing.assert_allclose(item["proprio"][:7].numpy(), joints, rtol=1e-6)
    last = ds[10]  # step 10 of a 12-step episode: 2 real actions, 6 repeats of the last one
    assert last["action_mask"].tolist() == [True, True] + [False] * 6
    np.testing.assert_allclose(last["actions"].numpy(), actions[[10, 11, 11, 11, 11, 11, 11, 11]], rtol=1e-6)


def test_statistics(suite: Path) -> None:
    ds = LiberoDataset(suite, augment=False, progress=False)
    stats = ds.stats()
    actions = np.concatenate([d.actions for d in ds.demos])
    proprio = np.concatenate([d.proprio for d in ds.demos])
    np.testing.assert_allclose(stats["action_min"], actions.min(0))
    np.testing.assert_allclose(stats["action_max"], actions.max(0))
    np.testing.assert_allclose(stats["proprio_mean"], proprio.mean(0), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(stats["proprio_std"], proprio.std(0), rtol=1e-4, atol=1e-7)
    assert stats["action_min"].shape == (7,) and stats["proprio_std"].shape == (9,)


def test_augmentation_is_reproducible_and_worker_independent(suite: Path) -> None:
    ds = LiberoDataset(suite, augment=True, shift=16, seed=1, progress=False)  # 16 px at 128 = 4 px at 32
    plain = LiberoDataset(suite, augment=False, progress=False)
    a, b = ds[5], ds[5]
    assert ds.shift == 4
    torch.testing.assert_close(a["agentview_rgb"], b["agentview_rgb"])
    shifted = [not torch.equal(ds[i]["agentview_rgb"], plain[i]["agentview_rgb"]) for i in range(len(ds))]
    assert sum(shifted) > len(ds) // 2
    ds.set_epoch(1)
    assert any(not torch.equal(ds[i]["agentview_rgb"], a["agentview_rgb"]) for i in [5])
    ds.set_epoch(0)
    sampler = [[0, 5, 9], [3, 7, 20]]
    serial = list(DataLoader(ds, batch_sampler=sampler, num_workers=0))
    parallel = list(DataLoader(ds, batch_sampler=sampler, num_workers=2))
    for s, p in zip(serial, parallel):
        torch.testing.assert_close(s["eye_in_hand_rgb"], p["eye_in_hand_rgb"])
        assert s["language"] == p["language"]


def test_resize_at_load(suite: Path) -> None:
    ds = LiberoDataset(suite, augment=False, image_size=16, progress=False)
    assert ds[0]["eye_in_hand_rgb"].shape == (3, 16, 16)


def _mutate(path: Path, fn) -> None:
    with h5py.File(path, "r+") as f:
        fn(f)


@pytest.mark.parametrize(
    "mutation, message",
    [
        (lambda f: f.__delitem__("data/demo_1/obs/joint_states"), "missing key 'data/demo_1/obs/joint_states'"),
        (lambda f: f.__delitem__("data/demo_0/actions"), "missing key 'data/demo_0/actions'"),
        (lambda f: f["data"].attrs.__delitem__("problem_info"), "problem_info"),
        (lambda f: f["data"].attrs.__setitem__("problem_info", "{not json"), "language_instruction"),
    ],
)
def test_bad_files_name_file_and_key(suite: Path, tmp_path: Path, mutation, message: str) -> None:
    bad = _copy_suite(suite, tmp_path / "bad")
    target = sorted(bad.glob("*.hdf5"))[1]
    _mutate(target, mutation)
    with pytest.raises(DatasetError) as err:
        LiberoDataset(bad, progress=False)
    assert str(target) in str(err.value) and message in str(err.value)
    assert "\n" not in str(err.value)


def test_shape_mismatch_and_corrupt_file(suite: Path, tmp_path: Path) -> None:
    bad = _copy_suite(suite, tmp_path / "shape")
    target = sorted(bad.glob("*.hdf5"))[0]

    def wrong_gripper(f: h5py.File) -> None:
        del f["data/demo_0/obs/gripper_states"]
        f["data/demo_0/obs"].create_dataset("gripper_states", data=np.zeros((12, 3)))

    _mutate(target, wrong_gripper)
    with pytest.raises(DatasetError, match=r"data/demo_0/obs/gripper_states' has shape \(12, 3\), expected \(12, 2\)"):
        read_demo_file(target)
    corrupt = tmp_path / "corrupt.hdf5"
    corrupt.write_bytes(target.read_bytes()[:3000])
    with pytest.raises(DatasetError, match="corrupt.hdf5: cannot be opened as HDF5"):
        read_demo_file(corrupt)


def test_missing_folder_says_where_demos_come_from(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as err:
        LiberoDataset(tmp_path / "data" / "libero_goal", progress=False)
    assert f"generate_demos.py --suite libero_goal --out {tmp_path / 'data'}/`" in str(err.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="has no \\*.hdf5 files"):
        LiberoDataset(tmp_path / "empty", progress=False)


@pytest.mark.sim
def test_simulator_recording_reads_back_as_the_evaluation_observation(tmp_path: Path) -> None:
    """A real LIBERO rollout written in the official layout is read back pixel-identical
    to what evaluation feeds the policy, and the policy's chunk drives the simulator."""
    from envs.libero.suites import NOOP_ACTION, get_init_states
    from envs.libero.observation import hdf5_obs_fields, stack_observations
    from envs.libero.env import make_env
    from policy.model.config import PolicyConfig
    from policy.model.language import LanguageEncoder
    from policy.model.policy import DiffusionPolicy

    env = make_env("libero_spatial", 0, resolution=64)
    try:
        obs = [env.set_init_state(get_init_states("libero_spatial", 0)[0])]
        fields = [hdf5_obs_fields(env.raw_obs)]
        for _ in range(2):
            o, _, _, _, info = env.step(NOOP_ACTION)
            obs.append(o)
            fields.append(info["fields"])
        demo = {k: np.stack([f[k] for f in fields]) for k in ("agentview_rgb", "eye_in_hand_rgb", "joint_states", "gripper_states")}
        demo["actions"] = np.stack([NOOP_ACTION] * 3)
        write_demo_file(tmp_path / "libero_spatial" / "task0_demo.hdf5", env.language, [demo])
        ds = LiberoDataset(tmp_path / "libero_spatial", augment=False, progress=False)
        assert len(ds) == 3 and ds.instructions == [env.language]
        for k in range(3):
            for cam in ("agentview_rgb", "eye_in_hand_rgb"):
                np.testing.assert_array_equal(ds[k][cam].permute(1, 2, 0).numpy(), obs[k][cam])
            np.testing.assert_allclose(ds[k]["proprio"].numpy(), np.r_[obs[k]["joint_states"], obs[k]["gripper_states"]], rtol=1e-6)
        cfg = PolicyConfig(suites=("libero_spatial",), image_size=32, resnet_widths=(8, 16, 32, 64), d_model=32, n_heads=4,
                           encoder_layers=0, decoder_layers=1)
        policy = DiffusionPolicy(cfg, LanguageEncoder(cache={env.language: torch.randn(384)}))
        policy.net.normalizer.set_stats(ds.stats())
        chunk = policy.predict(stack_observations([obs[-1]]), steps=2)
        assert chunk.shape == (1, 8, 7)
        _, _, _, _, info = env.step(chunk[0, 0])
        assert info["fields"]["agentview_rgb"].shape == (64, 64, 3)
    finally:
        env.close()


def test_missing_data_suggests_a_generate_command_that_fills_the_folder(tmp_path: Path) -> None:
    """It suggested `--suite <folder name>` even for folders not named after a suite (a command that fails)."""
    import re

    from envs.libero.dataset import find_hdf5_files

    for folder, suite in ((tmp_path / "data" / "libero_goal", "libero_goal"), (tmp_path / "mydemos", None)):
        folder.mkdir(parents=True)
        with pytest.raises(FileNotFoundError) as err:
            find_hdf5_files(folder)
        msg = str(err.value)
        assert "\n" not in msg and f"demonstration folder {folder} has no *.hdf5 files" in msg
        cmd = re.search(r"`python scripts/generate_demos.py --suite (\S+) --out (\S+)/`", msg)
        assert cmd is not None, msg
        if suite is not None:  # generate_demos.py writes <out>/<suite>/: exactly the folder asked for
            assert cmd.group(1) == suite and Path(cmd.group(2)) / cmd.group(1) == folder
        else:
            assert cmd.group(1) == "<suite>" and "--suite mydemos" not in msg and "libero_object" in msg
