"""Train the distributional (energy) and the classical (MSE) image diffusion models side by side.

Same U-Net, optimiser, data and number of steps; samples at several NFE through
policy.diffusion.sample; a PNG grid and a Frechet distance per model and NFE; training
step time for the classical loss and m = 2, 4, 8 measured round-robin in one run.

  python scripts/train_image.py --quick                      # digits 16x16, CPU, ~10 min
  python scripts/train_image.py --config cifar10 --data DIR  # paper config (GPU)

Results go to runs/image/ (ignored by git); --save-reference writes the committed
benchmarks/results/image.json and benchmarks/results/image/*.png instead.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from policy.image import frechet
from policy.image.train import (
    ImageData, TrainConfig, generate, load_cifar10, load_digits, load_image_folder, load_npz,
    measure_step_time, save_grid, save_image_model, train_image_model,
)
from policy.image.unet import PAPER_CIFAR10, QUICK_DIGITS, UNet, count_parameters
from policy.training.optim import NonFiniteError
from policy.scoring import LossConfig
from policy.utils import atomic_write_json

REFERENCE_DIR = Path(__file__).resolve().parents[2] / "benchmarks" / "results"  # committed results (in a checkout)

PRESETS = {
    # digits: 16x16 grey, small U-Net; sized to run in ~10 minutes on 2 CPU cores
    "digits": dict(unet=replace(QUICK_DIGITS, base_channels=16, attn_resolutions=()),
                   train=TrainConfig(steps=1000, batch_size=32, lr=2e-3, warmup=100, ema_decay=0.995),
                   n_samples=1000, timing_batch=32),
    # the paper's CIFAR-10 setting (DDPM U-Net, 35.7M params); meant for a GPU
    "cifar10": dict(unet=PAPER_CIFAR10,
                    train=TrainConfig(steps=400_000, batch_size=128, lr=2e-4, warmup=5000, ema_decay=0.9999,
                                      weighting="sigmoid", weight_bias=2.0),
                    n_samples=50_000, timing_batch=128),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--quick", action="store_true", help="digits config on CPU (same as --config digits)")
    p.add_argument("--config", choices=sorted(PRESETS), default="digits", help="preset")
    p.add_argument("--data", help="dataset: .npz, image folder or CIFAR-10 dir (default: bundled digits)")
    p.add_argument("--trust-pickle", action="store_true", help="allow loading CIFAR-10 python pickle batches")
    p.add_argument("--lam", type=float, default=1.0, help="energy loss lambda")
    p.add_argument("--beta", type=float, default=1.0, help="energy loss beta")
    p.add_argument("--population", "-m", type=int, default=4, help="population m of the energy loss")
    p.add_argument("--steps", type=int, help="training steps per model (preset default)")
    p.add_argument("--batch-size", type=int, help="batch size (preset default)")
    p.add_argument("--nfe", type=int, nargs="+", default=[1, 2, 4, 8, 16], help="sampling steps to evaluate")
    p.add_argument("--n-samples", type=int, help="samples per model and NFE for the metric")
    p.add_argument("--churn", type=float, default=0.0, help="sampler churn in [0, 1]")
    p.add_argument("--inception-weights", help="local FID Inception weights (.pth/.safetensors); else classifier FD")
    p.add_argument("--timing-steps", type=int, default=10, help="timed steps per loss (0 skips timing)")
    p.add_argument("--out", help="results dir for image.json and image/*.png (default: runs/image)")
    p.add_argument("--save-reference", action="store_true", help="write the committed results in benchmarks/results/")
    p.add_argument("--run-dir", default="runs/image", help="where model checkpoints go")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def load_data(args: argparse.Namespace, name: str) -> ImageData:
    if args.data is None:
        if name != "digits":
            raise SystemExit(f"error: --config {name} needs --data (no download here); e.g. --data ~/data/cifar10.npz")
        return load_digits(16)
    path = Path(args.data).expanduser()
    if name == "cifar10":
        return load_cifar10(path, trust_pickle=args.trust_pickle)
    size = PRESETS[name]["unet"].image_size
    return load_npz(path, size) if path.suffix == ".npz" else load_image_folder(path, size, PRESETS[name]["unet"].image_channels)


def machine_name(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name()
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {os.cpu_count()} cores (CPU)"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.save_reference and args.out:
        print("error: --save-reference writes into benchmarks/results/; drop --out (or drop --save-reference)", file=sys.stderr)
        return 2
    name = "digits" if args.quick else args.config
    preset = PRESETS[name]
    torch.set_num_threads(args.threads)
    try:
        data = load_data(args, name)
        unet_cfg = replace(preset["unet"], image_channels=data.shape[0], image_size=data.shape[1])
        train_cfg = replace(preset["train"], steps=args.steps or preset["train"].steps,
                            batch_size=args.batch_size or preset["train"].batch_size, seed=args.seed)
        energy = LossConfig(kind="energy", lam=args.lam, beta=args.beta, population=args.population)
    except (ValueError, FileNotFoundError, PermissionError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    n_samples = args.n_samples or preset["n_samples"]
    out = REFERENCE_DIR if args.save_reference else Path(args.out or "runs/image")
    grids = out / "image"
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    run_dir = Path(args.run_dir) / name / stamp
    t_start = time.time()
    print(f"{name}: {len(data.images)} images {data.shape}, U-Net {count_parameters(UNet(unet_cfg)) / 1e6:.2f}M params, "
          f"{train_cfg.steps} steps x batch {train_cfg.batch_size}, device {args.device}")
    save_grid(data.images[:64], grids / f"{name}_real.png", scale=4 if data.shape[1] <= 32 else 1)

    if args.inception_weights:
        feat_net, metric = frechet.load_inception(args.inception_weights), "fid_inception"
    else:
        feat_net, acc = frechet.train_classifier_features(data.images, data.labels, data.num_classes, seed=args.seed)
        metric = "classifier_frechet (NOT comparable with published FID)"
        print(f"metric classifier: held-out accuracy {acc:.3f}")
    real = frechet.extract_features(feat_net, data.images, device=args.device)
    half = len(real) // 2
    floor = frechet.frechet_distance(real[:half], real[half:])

    step_time: dict[str, float] = {}
    if args.timing_steps > 0:
        losses = {"mse": LossConfig(kind="mse", population=1)}
        losses.update({f"m{m}": replace(energy, population=m) for m in (2, 4, 8)})
        step_time = measure_step_time(unet_cfg, data, losses, preset["timing_batch"], args.timing_steps, device=args.device)
        print("step time (s): " + ", ".join(f"{k} {v:.3f}" for k, v in step_time.items()))

    results: dict[str, list[float]] = {}
    for label, loss in (("energy", energy), ("mse", LossConfig(kind="mse", population=1))):
        torch.manual_seed(args.seed)  # identical initial weights for both models
        model = UNet(unet_cfg)
        try:
            ema, hist = train_image_model(model, data, loss, train_cfg, device=args.device, desc=f"train {label}")
        except NonFiniteError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        save_image_model(ema, run_dir / label, {"loss": loss.__dict__, "train": train_cfg.__dict__, "dataset": data.name})
        results[label] = []
        for nfe in args.nfe:
            x = generate(ema, n_samples, nfe, args.churn, seed=args.seed + 1, device=args.device)
            fd = frechet.frechet_distance(frechet.extract_features(feat_net, x, device=args.device), real)
            results[label].append(fd)
            save_grid(x[:64], grids / f"{name}_{label}_nfe{nfe}.png", scale=4 if data.shape[1] <= 32 else 1)
            print(f"{label:6s} NFE {nfe:3d}: Frechet {fd:.3f}  (final train loss {sum(hist[-100:]) / len(hist[-100:]):.4f})")

    json_path = out / "image.json"
    doc = json.loads(json_path.read_text()) if json_path.is_file() else {}
    doc[name] = {"nfe": list(args.nfe), "energy": results["energy"], "mse": results["mse"], "metric": metric,
                 "real_split_floor": floor, "n_samples": n_samples, "lam": args.lam, "beta": args.beta,
                 "population": args.population, "steps": train_cfg.steps, "batch_size": train_cfg.batch_size,
                 "churn": args.churn, "checkpoints": str(run_dir)}
    if step_time:
        doc["step_time_s"] = step_time
        doc["step_time_setup"] = f"{name} U-Net, batch {preset['timing_batch']}, device {args.device}, {args.threads} threads"
    doc["machine"] = machine_name(args.device)
    doc["date"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    atomic_write_json(json_path, doc)
    wins = [n for n, e, m in zip(args.nfe, results["energy"], results["mse"]) if e < m]
    print(f"done in {time.time() - t_start:.0f}s: energy beats mse at NFE {wins}; wrote {json_path} and {grids}/")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
