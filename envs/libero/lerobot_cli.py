"""Convert official-layout LIBERO HDF5 demonstrations into a LeRobot dataset.

Examples:
  python scripts/convert_to_lerobot.py data/libero_10 --out data/lerobot/libero_10
  python scripts/convert_to_lerobot.py data/libero_object data/libero_goal --out data/lerobot/og --version v2.1
  python scripts/train_policy.py suite=libero_10 suite.data_dirs=[data/lerobot/libero_10]   # train from it

Writes LeRobot's v3.0 layout (v2.1 with --version v2.1): parquet frames, one mp4 per camera
(AV1 by default, as LeRobot encodes), meta/info.json, tasks, episodes and statistics; images
upright as the policy sees them. The folder appears when complete (built beside it, then
renamed). Needs pyarrow: pip install -e '.[lerobot]'. The code is in envs/libero/lerobot_write.py.
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    from envs.libero.video import CODECS, DEFAULT_CODEC
    from policy.features import PROPRIO_LAYOUTS

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folders", nargs="+", help="suite folders of official-layout *.hdf5 files")
    p.add_argument("--out", required=True, help="the LeRobot dataset folder to write (new or empty)")
    p.add_argument("--version", default="v3.0", choices=["v3.0", "v2.1"], help="LeRobot layout (default v3.0)")
    p.add_argument("--fps", type=float, default=20.0, help="frame rate recorded (default 20, LIBERO's control rate)")
    p.add_argument("--vcodec", default=DEFAULT_CODEC, choices=sorted(CODECS), help=f"video codec (default {DEFAULT_CODEC})")
    p.add_argument("--image-size", type=int, default=None, help="resize the frames (default: as stored)")
    p.add_argument("--state", default="joints", choices=list(PROPRIO_LAYOUTS),
                   help="the proprio layout of observation.state (default joints; every state feature is also written alone)")
    p.add_argument("--robot-type", default="panda")
    p.add_argument("--episodes-per-file", type=int, default=500, help="v3.0: episodes per data/video file (default 500)")
    args = p.parse_args(argv)
    if args.image_size is not None and args.image_size < 16:
        print(f"error: --image-size {args.image_size} is too small; use 16 or more (64 and 128 are the model sizes)", file=sys.stderr)
        return 2
    from envs.libero.dataset import DatasetError
    from envs.libero.lerobot_write import convert_hdf5_to_lerobot

    try:
        out = convert_hdf5_to_lerobot(args.folders, args.out, args.version, args.fps, args.vcodec, args.image_size, args.state,
                                      args.robot_type, args.episodes_per_file)
    except (ValueError, FileNotFoundError, FileExistsError, DatasetError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    import json

    info = json.loads((out / "meta" / "info.json").read_text())
    print(f"wrote {out}: LeRobot {info['codebase_version']}, {info['total_episodes']} episodes, {info['total_frames']} frames, "
          f"{info['total_tasks']} tasks")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
