"""The 2D experiment (paper Section 6.1): distributional (energy) vs classical (MSE) diffusion.

Trains both models on the same target with the same MLP, optimiser and budget, then
reports MMD^2 (unbiased, RBF h=1, 4096 samples, averaged over repeats) at several NFE,
and the posterior-std check on the mixture. Writes JSON and PNG plots into runs/toy2d/<config>/
(ignored by git); --save-reference writes the committed results in benchmarks/results/ instead.

  python scripts/train_toy2d.py --quick          # a few minutes on 2 CPU cores
  python scripts/train_toy2d.py --config paper   # 100k steps, m=16 (the paper-size run, ~3 hours)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from dataclasses import replace
from pathlib import Path

from policy.toy2d.targets import TARGETS
from policy.toy2d.train import Toy2DConfig, mmd_plot, run_experiment, scatter_grid
from policy.training.optim import NonFiniteError
from policy.utils import atomic_write_json

CONFIGS = {"quick": Toy2DConfig.quick, "medium": Toy2DConfig.medium, "paper": Toy2DConfig.paper}
REFERENCE_DIR = Path(__file__).resolve().parents[2] / "benchmarks" / "results"  # committed results (in a checkout)
CHOOSE_SIZE = ("error: choose a run size: --quick (~6 CPU-minutes), --config medium (~1 hour) or --config paper "
               "(~3 hours); e.g. python scripts/train_toy2d.py --quick")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="configs: quick (4k steps, m=8), medium (20k steps, m=8), paper (100k steps, m=16)")
    p.add_argument("--quick", action="store_true", help="shorthand for --config quick")
    p.add_argument("--config", choices=sorted(CONFIGS), default=None, help="experiment size (required unless --quick)")
    p.add_argument("--targets", default=None, help="comma list of targets (default: checkerboard,mixture)")
    p.add_argument("--steps", type=int, default=None, help="override the number of training steps")
    p.add_argument("--lam", type=float, default=None, help="override lambda of the energy loss")
    p.add_argument("--beta", type=float, default=None, help="override beta of the energy loss")
    p.add_argument("--population", "-m", type=int, default=None, help="override the population size m")
    p.add_argument("--nfes", default=None, help="comma list of sampling steps to evaluate (default: the config's)")
    p.add_argument("--mmd-samples", type=int, default=None, help="samples per side for MMD^2 (default 4096)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="folder for toy2d.json and the PNGs (default: runs/toy2d/CONFIG[_OVERRIDES])")
    p.add_argument("--save-reference", action="store_true",
                   help="overwrite the committed results benchmarks/results/toy2d[_CONFIG].json and toy2d[_CONFIG]/")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    return p.parse_args(argv)


def merge_targets(path: Path, results: dict) -> dict:
    """Keep the targets of an earlier run in ``path`` that this run did not train (same config only)."""
    if not path.exists():
        return results
    try:
        old = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return results
    same = {k: v for k, v in old.get("config", {}).items() if k != "targets"} == {
        k: v for k, v in json.loads(json.dumps(results["config"])).items() if k != "targets"}
    if not same:
        return results
    kept = {t: old[t] for t in TARGETS if t in old and t not in results}
    if kept:
        results = {**kept, **results}
        results["config"] = {**results["config"], "targets": sorted({*results["config"]["targets"], *kept})}
        results["wall_time_s_by_target"] = {**old.get("wall_time_s_by_target", {}), **results.get("wall_time_s_by_target", {})}
    return results


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.quick and args.config is None:
        print(CHOOSE_SIZE, file=sys.stderr)
        return 2
    if args.save_reference and args.out:
        print("error: --save-reference writes into benchmarks/results/; drop --out (or drop --save-reference)", file=sys.stderr)
        return 2
    name = "quick" if args.quick else args.config
    cfg = CONFIGS[name]()
    overrides = {k: v for k, v in {"steps": args.steps, "lam": args.lam, "beta": args.beta,
                                   "population": args.population, "seed": args.seed,
                                   "mmd_samples": args.mmd_samples}.items() if v is not None}
    if args.nfes:
        try:
            overrides["nfes"] = tuple(int(n) for n in args.nfes.split(","))
            assert all(n >= 1 for n in overrides["nfes"])
        except (ValueError, AssertionError):
            print(f"error: --nfes {args.nfes!r} must be a comma list of positive integers, e.g. 1,2,5", file=sys.stderr)
            return 2
    if args.targets:
        targets = tuple(t.strip() for t in args.targets.split(",") if t.strip())
        unknown = [t for t in targets if t not in TARGETS]
        if unknown:
            print(f"error: unknown target(s) {unknown}; choose from {sorted(TARGETS)}", file=sys.stderr)
            return 2
        overrides["targets"] = targets
    try:
        cfg = replace(cfg, **overrides)
        cfg.losses()  # validates lam / beta / m
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.save_reference:
        # --targets and --seed keep the paper config's name, so one run per target (e.g. on two
        # cores) fills the same results file: targets already in it are kept (merged below).
        suffix = "" if name == "paper" and not overrides.keys() - {"seed", "targets"} else f"_{name}"
        out = REFERENCE_DIR / f"toy2d{suffix}"
        json_path = REFERENCE_DIR / f"toy2d{suffix}.json"
    else:  # one folder per config and overrides, so an experiment never overwrites another run
        tag = "".join(f"_{k}{'-'.join(map(str, v)) if isinstance(v, tuple) else v}" for k, v in sorted(overrides.items())
                      if k != "targets" and not (k == "seed" and v == 0))
        out = Path(args.out or f"runs/toy2d/{name}{tag}")
        json_path = out / "toy2d.json"
    out.mkdir(parents=True, exist_ok=True)

    models: dict[str, dict] = {}
    t0 = time.perf_counter()
    try:
        results = run_experiment(cfg, progress=not args.no_progress,
                                 on_model=lambda target, model_name, model: models.setdefault(target, {}).__setitem__(model_name, model))
    except NonFiniteError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    results["machine"] = f"{platform.node() or 'cpu'}: {os.cpu_count()} CPU cores, {platform.processor() or platform.machine()}"
    results["date"] = time.strftime("%Y-%m-%d")
    results["wall_time_s"] = round(time.perf_counter() - t0, 1)
    results["wall_time_s_by_target"] = {t: results["wall_time_s"] for t in cfg.targets}
    results = merge_targets(json_path, results)
    atomic_write_json(json_path, results)
    mmd_plot(results, str(out / "mmd_vs_nfe.png"))
    for target, ms in models.items():
        scatter_grid(ms, target, tuple(n for n in (1, 2, 5, 10, 100) if n in cfg.nfes), str(out / f"samples_{target}.png"))

    for target in cfg.targets:
        r = results[target]
        print(f"\n{target}: MMD^2 (RBF h=1, n={cfg.mmd_samples}, {cfg.mmd_repeats} repeats), noise floor {r['noise_floor']:.2e}")
        print("  NFE    " + "".join(f"{n:>10d}" for n in r["nfe"]))
        for m in ("energy", "mse"):
            print(f"  {m:<7}" + "".join(f"{v:>10.2e}" for v in r[m]))
    print(f"\ndone: results in {json_path}, plots in {out}/ ({results['wall_time_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
