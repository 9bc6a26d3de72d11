"""The declared observation and action features of the LIBERO policy (LeRobot style).

One :class:`Feature` per key: a ``name`` (the key in an observation dict), a ``kind``
(``image``, ``state``, ``language`` or ``action``), a ``shape`` per sample and a ``dtype``
(a numpy dtype name, or ``str`` for text). A :class:`FeatureSpec` is the ordered tuple of
them; order matters (camera order, and state features are concatenated in spec order into
the proprio vector). ``None`` in a shape is a free dimension: images are (H, W, 3) uint8 of
any size (the network resizes them to ``PolicyConfig.image_size``).

``DEFAULT_FEATURES`` is the spec new policies are built with. It is read by:

* ``policy.model.config.PolicyConfig`` -- the defaults of ``cameras``, ``chunk_size``,
  ``action_dim``, ``proprio_dim``, and the ``features`` it records (saved in config.json by
  ``DiffusionPolicy.save_pretrained``); a config.json without ``features`` (written before
  they were recorded) loads with ``LEGACY_FEATURES``;
* ``DiffusionPolicy.predict`` -- the input checks and the proprio concatenation (from the
  policy's own recorded spec);
* ``policy.serving.wire`` / ``policy.serving.server`` -- accepted keys, validation, batching,
  the openpi ``observation/state`` split, metadata and the warm-up observation;
* ``envs.libero.observation.process_observation`` / ``stack_observations`` and
  ``envs.libero.dataset`` -- what is read from the HDF5 files and how;
* ``policy.training.bench`` -- its example observation.

The proprio layouts (``PROPRIO_LAYOUTS``, chosen by ``PolicyConfig.proprio`` / Hydra
``model.proprio``): ``joints`` (joint_states + gripper_states, the default) and ``eef``
(ee_pos + ee_ori + gripper_states, openpi's LIBERO ``observation/state``). A policy's
recorded features carry its layout; the readers above take the policy's spec.

Adding a feature (e.g. the end-effector pose openpi sends, ``ee_pos`` (3,) + ``ee_ori`` (3,),
which ``envs.libero.observation.hdf5_obs_fields`` and the official HDF5 files already carry):

1. here: build ``DEFAULT_FEATURES`` from ``LEGACY_FEATURES`` plus the new Feature (leave
   ``LEGACY_FEATURES`` as it is: old config.json files are read with it);
2. the model's encoder (``policy/model/network.py``) only for a new *kind* of input: a new
   state feature needs nothing there (it joins the proprio vector, ``proprio_dim`` follows
   the spec), a new camera gets its own ResNet from ``PolicyConfig.cameras``.

Nothing else in the package's reading code names the keys. Beyond it: the YAML model presets
(``configs/model/*.yaml``) pin ``cameras``/``chunk_size``/``action_dim`` and choose the
``proprio`` layout (their ``proprio_dim: null`` follows the state features; a camera added
here is used once it is listed in their ``cameras``); a raw
field the simulator does not write yet needs its producer (``hdf5_obs_fields``) and the demo
writers; clients that build observations by hand (the robot client, openpi's LIBERO example)
must send the new key.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

import numpy as np

IMAGE, STATE, LANGUAGE, ACTION = "image", "state", "language", "action"
OBJECTS, OBJECT_NAMES = "objects", "object_names"
KINDS = (IMAGE, STATE, OBJECTS, OBJECT_NAMES, LANGUAGE, ACTION)


@dataclass(frozen=True)
class Feature:
    """One declared input or output.

    Attributes:
        name: key in an observation dict (``action`` for the output).
        kind: image | state | objects | object_names | language | action.
        shape: per-sample shape (``None`` = any size); language is ``()``; objects
            ``(None, 10)`` (one row per scene object), object_names ``(None,)``.
        dtype: numpy dtype name (``uint8``, ``float32``) or ``str``.
    """

    name: str
    kind: str
    shape: tuple[int | None, ...]
    dtype: str

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"feature name {self.name!r} must be a non-empty string")
        if self.kind not in KINDS:
            raise ValueError(f"feature {self.name!r}: kind {self.kind!r} is unknown; use one of {list(KINDS)}")
        shape = tuple(self.shape)
        if not all(d is None or (isinstance(d, int) and not isinstance(d, bool) and d >= 1) for d in shape):
            raise ValueError(f"feature {self.name!r}: shape {list(shape)} must hold positive ints or null")
        object.__setattr__(self, "shape", shape)
        if self.kind == IMAGE and (len(shape) != 3 or shape[2] != 3 or self.dtype != "uint8"):
            raise ValueError(f"image feature {self.name!r} must be (H, W, 3) uint8, got {list(shape)} {self.dtype}")
        if self.kind in (STATE, ACTION) and (None in shape or not shape or self.dtype not in ("float32", "float64")):
            raise ValueError(f"{self.kind} feature {self.name!r} needs a fixed shape and a float dtype, got "
                             f"{list(shape)} {self.dtype}")
        if self.kind == LANGUAGE and (shape != () or self.dtype != "str"):
            raise ValueError(f"language feature {self.name!r} must have shape [] and dtype str")
        if self.kind == OBJECTS and (len(shape) != 2 or shape[0] is not None or shape[1] is None
                                     or self.dtype not in ("float32", "float64")):
            raise ValueError(f"objects feature {self.name!r} must be [null, k] float (one row per object), got "
                             f"{list(shape)} {self.dtype}")
        if self.kind == OBJECT_NAMES and (shape != (None,) or self.dtype != "str"):
            raise ValueError(f"object_names feature {self.name!r} must have shape [null] and dtype str")

    @property
    def size(self) -> int:
        """Number of values per sample (state and action features)."""
        return math.prod(d for d in self.shape if d is not None)

    def to_dict(self) -> dict[str, Any]:
        """JSON form: {"name", "kind", "shape" (list, null = free), "dtype"}."""
        return {"name": self.name, "kind": self.kind, "shape": list(self.shape), "dtype": self.dtype}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Feature:
        keys = {"name", "kind", "shape", "dtype"}
        if not isinstance(data, Mapping) or set(data) != keys:
            got = sorted(data) if isinstance(data, Mapping) else type(data).__name__
            raise ValueError(f"a feature is a mapping with keys {sorted(keys)}, got {got}")
        if not isinstance(data["shape"], (list, tuple)):
            raise ValueError(f"feature {data['name']!r}: shape must be a list, got {data['shape']!r}")
        return cls(str(data["name"]), str(data["kind"]), tuple(data["shape"]), str(data["dtype"]))


@dataclass(frozen=True)
class FeatureSpec:
    """An ordered set of features: the observation features, then exactly one action."""

    features: tuple[Feature, ...]

    def __post_init__(self) -> None:
        feats = tuple(self.features)
        object.__setattr__(self, "features", feats)
        names = [f.name for f in feats]
        if len(set(names)) != len(names):
            raise ValueError(f"feature names must be unique, got {names}")
        if sum(f.kind == ACTION for f in feats) != 1 or sum(f.kind == LANGUAGE for f in feats) != 1:
            raise ValueError(f"a feature spec needs exactly one action and one language feature, got {names}")
        if sum(f.kind == OBJECTS for f in feats) > 1 or sum(f.kind == OBJECTS for f in feats) != sum(
                f.kind == OBJECT_NAMES for f in feats):
            raise ValueError(f"a feature spec has one objects and one object_names feature, or neither; got {names}")
        if not any(f.kind in (IMAGE, OBJECTS) for f in feats):
            raise ValueError(f"a feature spec needs an image or an objects feature, got {names}")
        if len(self.action.shape) != 2:
            raise ValueError(f"the action feature must be (chunk, action_dim), got {list(self.action.shape)}")

    def of_kind(self, kind: str) -> tuple[Feature, ...]:
        return tuple(f for f in self.features if f.kind == kind)

    @property
    def observation(self) -> tuple[Feature, ...]:
        """The input features, in order."""
        return tuple(f for f in self.features if f.kind != ACTION)

    @property
    def observation_keys(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.observation)

    @property
    def images(self) -> tuple[Feature, ...]:
        return self.of_kind(IMAGE)

    @property
    def image_keys(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.images)

    @property
    def states(self) -> tuple[Feature, ...]:
        return self.of_kind(STATE)

    @property
    def state_dim(self) -> int:
        """Length of the proprio vector: the state features concatenated in spec order."""
        return sum(f.size for f in self.states)

    @property
    def objects(self) -> tuple[Feature, Feature] | None:
        """(poses, names) features of the object tokens, None for a policy without them."""
        poses, names = self.of_kind(OBJECTS), self.of_kind(OBJECT_NAMES)
        return (poses[0], names[0]) if poses else None

    @property
    def language(self) -> Feature:
        return self.of_kind(LANGUAGE)[0]

    @property
    def action(self) -> Feature:
        return self.of_kind(ACTION)[0]

    def to_list(self) -> list[dict[str, Any]]:
        """JSON form: a list of Feature.to_dict (a list, so the order survives sort_keys)."""
        return [f.to_dict() for f in self.features]

    @classmethod
    def from_list(cls, data: Iterable[Mapping[str, Any]]) -> FeatureSpec:
        return cls(tuple(Feature.from_dict(d) for d in data))

    def with_config(self, cameras: Iterable[str], chunk_size: int, action_dim: int) -> FeatureSpec:
        """This spec with the image features ``cameras`` (in that order; a name the spec does not
        declare is an (H, W, 3) uint8 image) and the action (chunk_size, action_dim)."""
        declared = {f.name: f for f in self.images}
        images = tuple(declared.get(c) or Feature(c, IMAGE, (None, None, 3), "uint8") for c in cameras)
        action = Feature(self.action.name, ACTION, (chunk_size, action_dim), self.action.dtype)
        rest = tuple(f for f in self.features if f.kind not in (IMAGE, ACTION))
        return FeatureSpec((*images, *rest, action))

    def example(self, batch: int | None, image_size: int, rng: np.random.Generator | None = None,
                text: str = "put the bowl on the plate") -> dict[str, Any]:
        """A made-up observation: images of ``image_size`` (random, drawn in spec order, with
        ``rng``; black without), zero states, two objects at the origin (a bowl and a plate), the
        instruction ``text``; batched (B, ...) with a list of B texts (and B name lists) when
        ``batch`` is given, else one unbatched observation."""
        lead = () if batch is None else (batch,)
        obs: dict[str, Any] = {}
        for f in self.observation:
            if f.kind == IMAGE:
                shape = (*lead, *(image_size if d is None else d for d in f.shape))
                obs[f.name] = np.zeros(shape, np.uint8) if rng is None else rng.integers(0, 256, shape, dtype=np.uint8)
            elif f.kind == STATE:
                obs[f.name] = np.zeros((*lead, *f.shape), np.dtype(f.dtype))
            elif f.kind == OBJECTS:
                obs[f.name] = np.zeros((*lead, 2, f.shape[1]), np.dtype(f.dtype))
            elif f.kind == OBJECT_NAMES:
                names = ["akita_black_bowl_1", "plate_1"]
                obs[f.name] = names if batch is None else [list(names) for _ in range(batch)]
            else:
                obs[f.name] = text if batch is None else [text] * batch
        return obs


# The features of every policy trained before config.json recorded them. Never change this:
# old config.json files (no "features") are read with it.
LEGACY_FEATURES = FeatureSpec((
    Feature("agentview_rgb", IMAGE, (None, None, 3), "uint8"),    # third-person camera, upright
    Feature("eye_in_hand_rgb", IMAGE, (None, None, 3), "uint8"),  # wrist camera, upright
    Feature("joint_states", STATE, (7,), "float32"),              # arm joint positions
    Feature("gripper_states", STATE, (2,), "float32"),            # finger positions
    Feature("language", LANGUAGE, (), "str"),                     # the task instruction
    Feature("action", ACTION, (8, 7), "float32"),                 # chunk of 8 x (dpos 3, daxis-angle 3, gripper)
))

# What new policies, the server, the dataset reader and the environment use.
DEFAULT_FEATURES = LEGACY_FEATURES

# The proprio layouts a policy can be built with (``PolicyConfig.proprio``): the state
# features, in the order they are concatenated into the proprio vector.
#   joints: joint_states (7) + gripper_states (2) = 9 (the default, every policy before layouts);
#   eef:    ee_pos (3) + ee_ori (3, axis-angle of the eef quaternion) + gripper_states (2) = 8,
#           openpi's / OpenVLA's LIBERO ``observation/state``
#           (concat(robot0_eef_pos, quat2axisangle(robot0_eef_quat), robot0_gripper_qpos)).
PROPRIO_LAYOUTS: dict[str, tuple[Feature, ...]] = {
    "joints": DEFAULT_FEATURES.states,
    "eef": (
        Feature("ee_pos", STATE, (3,), "float32"),                # end-effector position (world frame)
        Feature("ee_ori", STATE, (3,), "float32"),                # end-effector orientation, axis-angle
        Feature("gripper_states", STATE, (2,), "float32"),        # finger positions
    ),
}
DEFAULT_PROPRIO = "joints"


# Object tokens (``PolicyConfig.objects``): one observation token per movable scene object, from
# its pose and its name. ``object_poses`` (N, 10) float32 holds, per object, the simulator's
# ``<object>_pos`` (3, world frame), ``<object>_quat`` (4, x y z w) and
# ``<object>_to_robot0_eef_pos`` (3, the object in the end-effector frame); ``object_names``
# the N simulator names (``akita_black_bowl_1``), whose text (``object_text``: ``akita black
# bowl``) the frozen language model embeds. N differs between scenes: a batch pads to its
# largest N with zero rows named "" (``stack_objects``), which the policy masks out.
OBJECT_POSE_FIELDS: tuple[tuple[str, int], ...] = (("pos", 3), ("quat", 4), ("to_robot0_eef_pos", 3))
OBJECT_FEATURES: tuple[Feature, Feature] = (
    Feature("object_poses", OBJECTS, (None, sum(n for _, n in OBJECT_POSE_FIELDS)), "float32"),
    Feature("object_names", OBJECT_NAMES, (None,), "str"),
)
OBJECT_KEY_SUFFIX = "_to_robot0_eef_pos"  # the raw/HDF5 key that marks an object: <object>_to_robot0_eef_pos


def object_text(name: str) -> str:
    """The text embedded for an object name: ``akita_black_bowl_1`` -> ``akita black bowl``."""
    return " ".join(part for part in re.sub(r"_\d+$", "", str(name)).split("_") if part) or str(name)


def object_fields(fields: Mapping[str, Any]) -> tuple[list[str], np.ndarray]:
    """The objects of one step's raw or HDF5 fields: (names sorted, (N, 10) float64 poses),
    from the keys ``<object>_pos``, ``<object>_quat``, ``<object>_to_robot0_eef_pos``."""
    names = sorted(k[: -len(OBJECT_KEY_SUFFIX)] for k in fields if k.endswith(OBJECT_KEY_SUFFIX))
    width = OBJECT_FEATURES[0].shape[1]
    rows = [np.concatenate([np.asarray(fields[f"{n}_{s}"], np.float64).reshape(-1) for s, _ in OBJECT_POSE_FIELDS])
            for n in names]
    return names, (np.stack(rows) if rows else np.zeros((0, width)))


def pad_rows(values: list[Any], dtype: Any, row_shape: tuple[int, ...]) -> np.ndarray:
    """B arrays of (N_i, *row_shape) -> one (B, max N_i, *row_shape) array, zero rows past each N_i."""
    arrays = [np.asarray(v, dtype=dtype) for v in values]
    out = np.zeros((len(arrays), max((len(a) for a in arrays), default=0), *row_shape), dtype=dtype)
    for i, a in enumerate(arrays):
        out[i, : len(a)] = a
    return out


def pad_names(rows: list[Any], n: int | None = None) -> list[list[str]]:
    """B lists of strings -> B lists of length ``n`` (default the longest), padded with ""."""
    n = max((len(r) for r in rows), default=0) if n is None else n
    return [[str(x) for x in row] + [""] * (n - len(row)) for row in rows]


def stack_objects(poses: list[Any], names: list[Any], dtype: str = "float32") -> tuple[np.ndarray, list[list[str]]]:
    """B scenes' objects -> ((B, N_max, k) poses, B name lists), padded with zero rows named ""."""
    first = np.asarray(poses[0]) if poses else None
    width = first.shape[1] if first is not None and first.ndim == 2 else OBJECT_FEATURES[0].shape[1]
    out = pad_rows(poses, np.dtype(dtype), (width,))
    return out, pad_names(names, out.shape[1])


def with_objects(spec: FeatureSpec, objects: bool) -> FeatureSpec:
    """``spec`` with (True) or without (False) the object-token features, placed after the states."""
    feats = [f for f in spec.features if f.kind not in (OBJECTS, OBJECT_NAMES)]
    if objects:
        at = next(i for i, f in enumerate(feats) if f.kind in (LANGUAGE, ACTION))
        feats[at:at] = OBJECT_FEATURES
    return FeatureSpec(tuple(feats))


def all_layouts(spec: FeatureSpec) -> FeatureSpec:
    """``spec`` with the state features of every proprio layout (each once, joints first): what
    an environment observes, so that a policy of any layout finds its own state features in it."""
    states: dict[str, Feature] = {}
    for feats in PROPRIO_LAYOUTS.values():
        states.update({f.name: f for f in feats if f.name not in states})
    return _with_states(spec, tuple(states.values()))


def _with_states(spec: FeatureSpec, states: tuple[Feature, ...]) -> FeatureSpec:
    """``spec`` with its state features replaced by ``states``, in their place (images, states,
    language, action)."""
    feats = [f for f in spec.features if f.kind != STATE]
    at = next(i for i, f in enumerate(feats) if f.kind in (OBJECTS, LANGUAGE, ACTION))
    return FeatureSpec((*feats[:at], *states, *feats[at:]))


def with_proprio(spec: FeatureSpec, layout: str) -> FeatureSpec:
    """``spec`` with its state features replaced by those of the proprio ``layout`` (kept in
    place of the old ones: images, states, language, action)."""
    if layout not in PROPRIO_LAYOUTS:
        raise ValueError(f"proprio layout {layout!r} is unknown; use one of {list(PROPRIO_LAYOUTS)}")
    return _with_states(spec, PROPRIO_LAYOUTS[layout])


def proprio_layout(spec: FeatureSpec) -> str | None:
    """The name of the proprio layout ``spec``'s state features follow, None for any other."""
    for name, feats in PROPRIO_LAYOUTS.items():
        if spec.states == feats:
            return name
    return None


def describe_state(spec: FeatureSpec) -> str:
    """``the eef layout: ee_pos (3) + ee_ori (3) + gripper_states (2) = 8`` (for error messages)."""
    layout = proprio_layout(spec)
    parts = " + ".join(f"{f.name} ({f.size})" for f in spec.states)
    return f"{'the ' + layout + ' layout' if layout else 'the state features'}: {parts} = {spec.state_dim}"

__all__ = ["ACTION", "DEFAULT_FEATURES", "DEFAULT_PROPRIO", "Feature", "FeatureSpec", "IMAGE", "KINDS", "LANGUAGE", "LEGACY_FEATURES",
           "OBJECTS", "OBJECT_FEATURES", "OBJECT_KEY_SUFFIX", "OBJECT_NAMES", "OBJECT_POSE_FIELDS", "PROPRIO_LAYOUTS", "STATE",
           "all_layouts", "describe_state", "object_fields", "object_text", "pad_names", "pad_rows", "proprio_layout",
           "stack_objects", "with_objects", "with_proprio"]
