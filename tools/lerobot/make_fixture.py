#!/usr/bin/env python
"""Write tests/fixtures/lerobot_tiny/ with LeRobot's OWN writer (LeRobotDataset.create, add_frame,
save_episode), so that CI tests train from a dataset this package did not write.

The content is ``write_synthetic_suite(n_tasks=2, n_demos=2, length=12, size=64)`` read with the
eef proprio layout, under the names of the published LIBERO sets (HuggingFaceVLA/libero):
``observation.images.image`` (agent view), ``observation.images.image2`` (wrist),
``observation.state`` (8: eef pos, axis-angle, gripper), ``action`` (7), fps 10.

Needs lerobot, which cannot be installed beside this package's torch (it pins torch<2.11 and
needs torchvision); it was run once in a separate virtual environment:
  python -m venv --system-site-packages /tmp/lrvenv
  /tmp/lrvenv/bin/pip install "datasets>=4,<5" pandas jsonlines "av>=15" termcolor draccus==0.10.0 deepdiff
  /tmp/lrvenv/bin/pip install --no-deps lerobot==0.4.4 accelerate
  # + a stand-in torchvision package exposing transforms.ToTensor, transforms.v2.Transform and an
  #   io.VideoReader on PyAV (PyPI's torchvision does not load beside torch 2.13 CPU)
  /tmp/lrvenv/bin/python tools/lerobot/make_fixture.py tests/fixtures/lerobot_tiny
"""

from __future__ import annotations

import sys
import tempfile

import numpy as np


def main(out: str) -> int:
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    from envs.libero.dataset import read_demo_file, write_synthetic_suite
    from policy.features import DEFAULT_FEATURES, with_proprio

    spec = with_proprio(DEFAULT_FEATURES, "eef")
    features = {
        "observation.images.image": {"dtype": "video", "shape": (64, 64, 3), "names": ["height", "width", "channel"]},
        "observation.images.image2": {"dtype": "video", "shape": (64, 64, 3), "names": ["height", "width", "channel"]},
        "observation.state": {"dtype": "float32", "shape": (8,), "names": ["x", "y", "z", "ax", "ay", "az", "g0", "g1"]},
        "action": {"dtype": "float32", "shape": (7,), "names": ["x", "y", "z", "roll", "pitch", "yaw", "gripper"]},
    }
    ds = LeRobotDataset.create("local/lerobot_tiny", fps=10, features=features, root=out, robot_type="panda", use_videos=True)
    with tempfile.TemporaryDirectory() as tmp:
        for path in write_synthetic_suite(tmp, n_tasks=2, n_demos=2, length=12, size=64):
            for demo in read_demo_file(path, spec=spec):
                for k in range(len(demo.actions)):
                    ds.add_frame({"observation.images.image": demo.images["agentview_rgb"][k],
                                  "observation.images.image2": demo.images["eye_in_hand_rgb"][k],
                                  "observation.state": demo.proprio[k].astype(np.float32),
                                  "action": demo.actions[k].astype(np.float32), "task": demo.language})
                ds.save_episode()
    ds.finalize()
    print(f"wrote {out}: {ds.meta.total_episodes} episodes, {ds.meta.total_frames} frames")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures/lerobot_tiny"))
