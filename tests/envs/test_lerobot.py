"""LeRobot datasets in and out: HDF5 -> LeRobot (v3.0, v2.1) -> training samples equal the HDF5
reader's (images up to the video codec's loss), a dataset written by LeRobot's own writer
(tests/fixtures/lerobot_tiny, made by tools/lerobot/make_fixture.py) trains, and a dataset that
does not fit the policy is one line naming the feature and the fix.

Measured codec loss (AV1, yuv420p, crf 30, 64 px synthetic frames: flat colours and a white
square): mean absolute error 0.71 (our writer) and 0.94 (LeRobot's) grey levels, 99% of the
values within 6 and 9; the maximum (255) is at the square's corners, where 4:2:0 chroma subsampling
shares one colour between the white square and the saturated background. States and actions
are exact.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("pyarrow")

from envs.libero.data_sources import open_training_data  # noqa: E402
from envs.libero.dataset import write_synthetic_suite  # noqa: E402
from envs.libero.lerobot_read import LeRobotError, load_meta, resolve_features  # noqa: E402
from envs.libero.lerobot_write import convert_hdf5_to_lerobot  # noqa: E402
from policy.features import DEFAULT_FEATURES, with_objects, with_proprio  # noqa: E402

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "lerobot_tiny"
EEF = with_proprio(DEFAULT_FEATURES, "eef")
TINY = ["model.image_size=32", "model.resnet_widths=[8,16,32,64]", "model.d_model=64", "model.decoder_layers=2",
        "train.num_workers=0", "train.wandb_mode=disabled", "train.batch_size=8", "train.warmup_steps=5", "train.steps=2",
        "loss=mse"]


@pytest.fixture(scope="module")
def suite(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("lr") / "libero_syn"
    write_synthetic_suite(folder, n_tasks=2, n_demos=2, length=12, size=64)
    return folder


def _compare(hdf5, lerobot) -> np.ndarray:
    """Every item: states, actions, mask and instruction equal; returns the images' absolute errors."""
    assert len(hdf5) == len(lerobot) and hdf5.instructions == lerobot.instructions
    errors = []
    for i in range(len(hdf5)):
        a, b = hdf5[i], lerobot[i]
        for key in ("proprio", "actions", "action_mask"):
            assert torch.equal(a[key], b[key]), (i, key)
        assert a["language"] == b["language"]
        for cam in DEFAULT_FEATURES.image_keys:
            assert a[cam].shape == b[cam].shape and b[cam].dtype == torch.uint8
            errors.append((a[cam].int() - b[cam].int()).abs().numpy())
    return np.stack(errors)


def _codec_loss_is_small(err: np.ndarray) -> None:
    assert err.mean() < 1.5 and np.quantile(err, 0.99) <= 12, (err.mean(), np.quantile(err, 0.99))


@pytest.mark.parametrize("version", ["v3.0", "v2.1"])
def test_hdf5_to_lerobot_to_training_samples(suite: Path, tmp_path: Path, version: str) -> None:
    out = convert_hdf5_to_lerobot(suite, tmp_path / "ds", version=version, progress=False)
    info = json.loads((out / "meta" / "info.json").read_text())
    assert info["codebase_version"] == version and info["total_episodes"] == 4 and info["total_frames"] == 48
    assert info["features"]["observation.images.agentview_rgb"]["info"]["video.codec"] == "av1"
    assert info["features"]["observation.state"]["shape"] == [9] and info["features"]["action"]["shape"] == [7]
    layout = {"v3.0": ["meta/tasks.parquet", "meta/episodes/chunk-000/file-000.parquet", "data/chunk-000/file-000.parquet",
                       "videos/observation.images.eye_in_hand_rgb/chunk-000/file-000.mp4"],
              "v2.1": ["meta/tasks.jsonl", "meta/episodes.jsonl", "meta/episodes_stats.jsonl",
                       "data/chunk-000/episode_000003.parquet", "videos/chunk-000/observation.images.agentview_rgb/episode_000003.mp4"]}
    assert all((out / f).is_file() for f in layout[version] + ["meta/stats.json"]), sorted(p.name for p in out.rglob("*"))
    assert not list(tmp_path.glob(".ds.tmp-*"))
    for spec in (DEFAULT_FEATURES, EEF):  # observation.<state feature> serves either layout
        hdf5 = open_training_data(suite, spec=spec, augment=False, progress=False)
        ram = open_training_data(out, spec=spec, augment=False, progress=False)
        _codec_loss_is_small(_compare(hdf5, ram))
        for key, value in hdf5.stats().items():
            np.testing.assert_array_equal(value, ram.stats()[key])
        bounded = open_training_data(out, spec=spec, augment=False, progress=False, reader="bounded", cache_dir=tmp_path / "c")
        assert all(torch.equal(ram[i][c], bounded[i][c]) for i in range(len(ram)) for c in DEFAULT_FEATURES.image_keys)
    read = open_training_data(out, augment=False, progress=False, lerobot_stats="dataset").stats()  # meta/stats.json
    for key, value in open_training_data(suite, augment=False, progress=False).stats().items():
        np.testing.assert_allclose(read[key], value, rtol=1e-5, atol=1e-6)


def test_lerobots_own_dataset_matches_and_trains(suite: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    meta = load_meta(FIXTURE)  # written by lerobot 0.4.4's LeRobotDataset (v3.0, AV1 via PyAV), LIBERO names
    assert meta.version == "v3.0" and meta.fps == 10 and len(meta.episodes) == 4
    fmap = resolve_features(meta, EEF, fps=10)
    assert fmap.cameras == {"agentview_rgb": "observation.images.image", "eye_in_hand_rgb": "observation.images.image2"}
    assert fmap.state == ["observation.state"] and fmap.action == "action"
    hdf5 = open_training_data(suite, spec=EEF, augment=False, progress=False)
    _codec_loss_is_small(_compare(hdf5, open_training_data(FIXTURE, spec=EEF, augment=False, progress=False, fps=10)))
    from envs.training_cli import main

    monkeypatch.chdir(tmp_path)
    assert main([f"suite.data_dirs=[{FIXTURE}]", "model.proprio=eef", "data.fps=10", "data.reader=bounded",
                 f"data.cache_dir={tmp_path / 'cache'}", *TINY]) == 0
    assert (tmp_path / "runs" / "latest" / "policy" / "model.safetensors").is_file()


@pytest.mark.parametrize("spec, kwargs, message", [
    (EEF, {}, r"records fps 10, not data.fps=20 .*set data.fps=10"),
    (DEFAULT_FEATURES, {"fps": 10}, r"observation.state of the LeRobot dataset .* has 8 values; the policy's proprio is the "
                                    r"joints layout: joint_states \(7\) \+ gripper_states \(2\) = 9: choose the matching model.proprio"),
    (EEF.with_config(["agentview_rgb", "top_rgb"], 8, 7), {"fps": 10},
     r"no camera for the policy's top_rgb \(its cameras: observation.images.image, observation.images.image2\); "
     r"map one with data.lerobot_features.top_rgb=<key>"),
    (EEF.with_config(["agentview_rgb"], 8, 6), {"fps": 10}, r"action of the LeRobot dataset .* has 7 values per step; "
                                                            r"the policy's actions have 6 \(model.action_dim\)"),
    (with_objects(EEF, True), {"fps": 10}, r"object-token policies .* train them from official-layout HDF5 folders"),
    (EEF, {"fps": 10, "mapping": {"wrist": "x"}}, r"data.lerobot_features names \['wrist'\], which are not features"),
    (EEF, {"fps": 10, "mapping": {"state": "observation.velocity"}},
     r"data.lerobot_features.state='observation.velocity' is not a feature of the LeRobot dataset"),
])
def test_mismatched_dataset_is_one_line(spec, kwargs: dict, message: str) -> None:
    with pytest.raises(LeRobotError, match=message) as err:
        resolve_features(load_meta(FIXTURE), spec, kwargs.get("mapping"), kwargs.get("fps", 20.0))
    assert "\n" not in str(err.value)


def test_cli_errors_are_one_line(suite: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                 capsys: pytest.CaptureFixture) -> None:
    from envs.libero.lerobot_cli import main as convert
    from envs.training_cli import main as train

    monkeypatch.chdir(tmp_path)
    assert train([f"suite.data_dirs=[{FIXTURE}]", "model.proprio=eef", *TINY]) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith("error: the LeRobot dataset") and "set data.fps=10" in line
    assert train([f"suite.data_dirs=[{FIXTURE},{suite}]", *TINY]) == 2
    assert "mix LeRobot datasets and HDF5 folders" in capsys.readouterr().err
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "x").write_text("")
    assert convert([str(suite), "--out", str(tmp_path / "taken")]) == 2
    assert capsys.readouterr().err.strip() == f"error: {tmp_path / 'taken'} exists and is not empty; choose a new folder " \
                                              "(the converter does not append)"


def _as_image_features(src: Path, dst: Path) -> Path:
    """``src`` (our v2.1 output) with its cameras as LeRobot ``image`` features (PNG bytes in the
    parquet frames, no videos), named as in openpi's LIBERO set (``image``, ``wrist_image``)."""
    import shutil

    import pyarrow as pa
    import pyarrow.parquet as pq

    from envs.libero.video import decode_frames, encode_png

    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("videos"))
    info = json.loads((dst / "meta" / "info.json").read_text())
    names = {"observation.images.agentview_rgb": "image", "observation.images.eye_in_hand_rgb": "wrist_image"}
    for path in sorted((dst / "data").rglob("*.parquet")):
        table = pq.read_table(path)
        episode = table.column("episode_index")[0].as_py()
        for key, name in names.items():
            video = src / info["video_path"].format(episode_chunk=0, video_key=key, episode_index=episode)
            cells = [{"bytes": encode_png(f), "path": None} for f in decode_frames(video)]
            table = table.append_column(name, pa.array(cells, pa.struct([("bytes", pa.binary()), ("path", pa.string())])))
        pq.write_table(table, path)
    for key, name in names.items():
        feature = info["features"].pop(key)
        info["features"][name] = {"dtype": "image", "shape": feature["shape"], "names": feature["names"]}
    info["video_path"], info["total_videos"] = None, 0
    (dst / "meta" / "info.json").write_text(json.dumps(info))
    return dst


def test_image_features_read_like_videos(suite: Path, tmp_path: Path) -> None:
    videos = convert_hdf5_to_lerobot(suite, tmp_path / "videos", version="v2.1", progress=False)
    images = _as_image_features(videos, tmp_path / "images")
    assert resolve_features(load_meta(images), DEFAULT_FEATURES).cameras == {"agentview_rgb": "image",
                                                                             "eye_in_hand_rgb": "wrist_image"}
    from_videos = open_training_data(videos, augment=False, progress=False)
    from_images = open_training_data(images, augment=False, progress=False)
    assert not _compare(from_videos, from_images).any()  # PNG is lossless: the very frames the videos decode to
