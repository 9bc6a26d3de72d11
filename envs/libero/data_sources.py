"""The training data set a config asks for: its format and its reader.

Format, per folder: a LeRobot dataset (``meta/info.json``; ``envs.libero.lerobot_read``) or a
folder of official-layout ``*.hdf5`` files (``envs.libero.dataset``); one run reads one format.
Reader (``data.reader``): ``ram`` decodes every frame into each process's memory
(``LiberoDataset``, fastest for small data), ``bounded`` builds the processed frames once per
machine into ``data.cache_dir`` and reads them per sample (``envs.libero.frame_cache``: flat
memory per process, shared by the DataLoader workers and the DDP ranks). Both give the same
items, statistics and augmentation.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from envs.libero.dataset import LiberoDataset, find_hdf5_files, iter_demo_file
from envs.libero.frame_cache import CachedLiberoDataset, build_once, default_cache_dir, file_identity, spec_identity
from policy.features import DEFAULT_FEATURES, FeatureSpec

READERS = ("ram", "bounded")
STATS = ("recompute", "dataset")


def _progress(items, desc: str, on: bool):
    from tqdm import tqdm

    return tqdm(items, desc=desc, unit="file", disable=not on)


def open_training_data(folders: str | Path | Sequence[str | Path], spec: FeatureSpec | None = None, chunk_size: int = 8,
                       augment: bool = True, shift: int = 4, image_size: int | None = None, seed: int = 0,
                       reader: str = "ram", cache_dir: str | Path | None = None, fps: float | None = 20.0,
                       lerobot_features: Mapping[str, str] | None = None, lerobot_stats: str = "recompute",
                       progress: bool = True) -> LiberoDataset:
    """The data set of ``folders`` for a policy of features ``spec`` (see module docstring).

    ``fps``, ``lerobot_features`` and ``lerobot_stats`` apply to LeRobot datasets: the frame rate
    expected (None: any), policy feature -> dataset key overrides, and whether the statistics
    are recomputed from the data or read from the dataset's meta/stats.json.
    """
    spec = DEFAULT_FEATURES if spec is None else spec
    lerobot_features = {k: v for k, v in (lerobot_features or {}).items() if v}
    if reader not in READERS:
        raise ValueError(f"data.reader={reader!r} is not one of {', '.join(READERS)}")
    if lerobot_stats not in STATS:
        raise ValueError(f"data.lerobot_stats={lerobot_stats!r} is not one of {', '.join(STATS)}")
    folders = [Path(folders)] if isinstance(folders, (str, Path)) else [Path(f) for f in folders]
    from envs.libero.lerobot_read import is_lerobot

    kinds = {is_lerobot(f) for f in folders}
    if len(kinds) > 1:
        raise ValueError(f"{', '.join(map(str, folders))} mix LeRobot datasets and HDF5 folders; train from one format "
                         "(convert with scripts/convert_to_lerobot.py)")
    common = dict(chunk_size=chunk_size, augment=augment, shift=shift, seed=seed, spec=spec)
    if kinds == {True}:
        return _lerobot(folders, spec, image_size, reader, cache_dir, fps, lerobot_features, lerobot_stats, progress, common)
    if lerobot_features:
        raise ValueError("data.lerobot_features applies to LeRobot datasets; these folders hold HDF5 files")
    if reader == "ram":
        return LiberoDataset(folders, image_size=image_size, progress=progress, **common)
    files = find_hdf5_files(folders)
    identity = {"source": "hdf5", "files": file_identity(files), **spec_identity(spec, image_size)}

    def demos():
        for path in _progress(files, "caching frames", progress):
            yield from iter_demo_file(path, image_size, spec)

    path = build_once(cache_dir or default_cache_dir(), identity, demos, spec.image_keys)
    return CachedLiberoDataset(path, files=files, **common)


def _lerobot(roots: list[Path], spec: FeatureSpec, image_size: int | None, reader: str, cache_dir, fps, mapping, stats_from,
             progress: bool, common: dict) -> LiberoDataset:
    from envs.libero.lerobot_read import dataset_files, dataset_stats, iter_demos, load_meta, resolve_features

    metas = [load_meta(r) for r in roots]
    fmaps = [resolve_features(m, spec, mapping, fps) for m in metas]

    def demos():
        for meta, fmap in zip(metas, fmaps):
            yield from iter_demos(meta, fmap, image_size)

    if reader == "ram":
        data = LiberoDataset.from_demos(roots, demos(), **common)
    else:
        files = [f for r in roots for f in dataset_files(r)]
        identity = {"source": "lerobot", "files": file_identity(files), **spec_identity(spec, image_size),
                    "map": [[m.cameras, m.state, m.action] for m in fmaps]}
        data = CachedLiberoDataset(build_once(cache_dir or default_cache_dir(), identity, demos, spec.image_keys),
                                   files=roots, **common)
    if stats_from == "dataset":
        if len(metas) > 1:
            raise ValueError("data.lerobot_stats=dataset reads one dataset's meta/stats.json; with several datasets use "
                             "data.lerobot_stats=recompute")
        data.fixed_stats = dataset_stats(metas[0], fmaps[0])
    return data
