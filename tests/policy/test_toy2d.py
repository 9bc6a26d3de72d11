"""2D targets, closed-form posterior, exact denoisers through the sampler, training, script."""

import json
from pathlib import Path

import pytest
import torch

from policy.toy2d.mlp import MLPGenerator
from policy.scoring import LossConfig
from policy.toy2d.targets import (
    ExactMixturePosteriorMean,
    ExactMixturePosteriorSampler,
    mixture_posterior_mean,
    mixture_posterior_std,
    mmd2_unbiased,
    model_mmd,
    noise_floor_mmd,
    posterior_std_metric,
    sample_checkerboard,
    sample_mixture,
    sample_target,
)
from policy.toy2d.train import Toy2DConfig, train_generator


def test_checkerboard_lies_on_the_black_squares():
    x = sample_checkerboard(5000, torch.Generator().manual_seed(0))
    assert x.abs().max() <= 4.0
    cells = torch.floor(x / 2).long()
    assert bool(((cells[:, 0] + cells[:, 1]) % 2 == 0).all())  # one colour only
    assert len({tuple(c) for c in cells.tolist()}) == 8


def test_mixture_samples_have_the_stated_moments():
    x = sample_mixture(20000, torch.Generator().manual_seed(0))
    assert x[:, 1].mean().item() == pytest.approx(3.0, abs=0.02)
    assert x[:, 0].abs().mean().item() == pytest.approx(3.0, abs=0.03)
    with pytest.raises(ValueError, match="unknown 2D target"):
        sample_target("moons", 4)


def test_closed_form_posterior_matches_importance_sampling():
    # p(x0 | x_t) is proportional to p(x0) N(x_t; alpha x0, sigma^2 I): weight prior samples.
    g = torch.Generator().manual_seed(0)
    prior = sample_mixture(400_000, g).double()
    for tv, x_t in [(0.3, torch.tensor([1.0, 2.0])), (0.7, torch.tensor([-0.5, 0.4])), (0.9, torch.tensor([0.3, 1.2]))]:
        t = torch.tensor([tv])
        logw = -((x_t.double() - (1 - tv) * prior).pow(2).sum(-1)) / (2 * tv**2)
        w = torch.softmax(logw, 0)[:, None]
        mean_is = (w * prior).sum(0)
        std_is = ((w * (prior - mean_is).pow(2)).sum(0)).sqrt()
        torch.testing.assert_close(mixture_posterior_mean(x_t[None], t)[0].double(), mean_is, atol=0.03, rtol=0)
        torch.testing.assert_close(mixture_posterior_std(x_t[None], t)[0].double(), std_is, atol=0.03, rtol=0)


def test_mmd_is_near_zero_for_equal_and_large_for_different_distributions():
    g = torch.Generator().manual_seed(0)
    a, b = sample_mixture(1500, g), sample_mixture(1500, g)
    assert abs(mmd2_unbiased(a, b)) < 3e-3
    assert mmd2_unbiased(a, b + torch.tensor([1.0, 0.0])) > 0.05


@pytest.mark.parametrize("steps", [1, 2])
def test_exact_posterior_sampler_reproduces_the_target_in_few_steps_but_the_mean_does_not(steps):
    """The paper's claim with exact denoisers: no learning involved, it tests the sampler."""
    n = 2048
    floor = noise_floor_mmd("mixture", n, seed=5)
    exact = model_mmd(ExactMixturePosteriorSampler(), "mixture", steps, n, seed=1)
    mean = model_mmd(ExactMixturePosteriorMean(), "mixture", steps, n, seed=1)
    assert abs(exact) < 3e-3 and abs(floor) < 3e-3  # both at the noise floor of two target samples
    assert mean > 0.05  # the ideal classical denoiser collapses with 1-2 steps
    assert mean > 30 * max(abs(exact), 1e-3)


@pytest.mark.parametrize("churn", [0.0, 0.5, 1.0])
def test_exact_posterior_sampler_is_exact_for_every_churn(churn):
    assert abs(model_mmd(ExactMixturePosteriorSampler(), "mixture", 4, 2048, churn=churn, seed=2)) < 3e-3


def test_posterior_std_metric_on_exact_denoisers():
    exact = posterior_std_metric(ExactMixturePosteriorSampler(), times=(0.3, 0.8), n_points=64, k=256)
    mean = posterior_std_metric(ExactMixturePosteriorMean(), times=(0.3, 0.8), n_points=64, k=8)
    assert max(exact["abs_error"]) < 0.05
    assert mean["model"] == [0.0, 0.0] and mean["abs_error"][1] > 0.3


def test_mlp_generator_uses_its_noise_and_shares_x_t_across_the_population():
    net = MLPGenerator(hidden=32, depth=2)
    t, x_t, xi = torch.rand(4), torch.randn(4, 2), torch.randn(4, 3, 2)
    out = net(t, x_t, xi)
    assert out.shape == (4, 3, 2)
    assert not torch.allclose(out[:, 0], out[:, 1])
    same = net(t, x_t, xi[:, :1].expand(-1, 3, -1))
    torch.testing.assert_close(same[:, 0], same[:, 2])


def test_short_training_learns_a_spread_with_energy_and_a_mean_with_mse():
    cfg = Toy2DConfig(steps=600, warmup_steps=50, hidden=64, depth=2, population=4)
    energy, hist_e = train_generator("mixture", LossConfig(kind="energy", lam=1.0, beta=1.0, population=4), cfg, progress=False)
    mse, hist_m = train_generator("mixture", LossConfig(kind="mse", population=1), cfg, progress=False)
    assert hist_e[-1]["loss"] < hist_e[0]["loss"] and hist_m[-1]["loss"] < hist_m[0]["loss"]
    e = posterior_std_metric(energy, times=(0.9,), n_points=64, k=64)
    m = posterior_std_metric(mse, times=(0.9,), n_points=64, k=64)
    # at t=0.9 the true posterior is bimodal (std ~3 in x); only the energy model spreads out
    assert e["model"][0] > 1.0 and e["model"][0] > 3 * m["model"][0]


def _toy2d_script():
    from policy.toy2d import cli

    return cli


def test_train_toy2d_script_writes_results_and_plots(tmp_path):
    mod = _toy2d_script()
    rc = mod.main(["--quick", "--steps", "20", "--targets", "mixture", "--nfes", "1,2", "--mmd-samples", "256",
                   "--out", str(tmp_path), "--no-progress"])
    assert rc == 0
    res = json.loads((tmp_path / "toy2d.json").read_text())
    assert res["mixture"]["nfe"] == [1, 2] and len(res["mixture"]["energy"]) == 2 and len(res["mixture"]["mse"]) == 2
    assert "posterior_std" in res["mixture"]
    assert (tmp_path / "mmd_vs_nfe.png").stat().st_size > 1000
    assert (tmp_path / "samples_mixture.png").stat().st_size > 1000
    assert mod.main(["--quick", "--targets", "moons", "--out", str(tmp_path)]) == 2
    assert mod.main(["--quick", "--nfes", "0,x", "--out", str(tmp_path)]) == 2


def test_train_toy2d_script_needs_a_size_and_never_starts_the_paper_run_by_default(monkeypatch, capsys):
    mod = _toy2d_script()

    def must_not_train(*a, **k):
        raise AssertionError("a run started without --quick or --config")

    monkeypatch.setattr(mod, "run_experiment", must_not_train)
    for argv in ([], ["--targets", "mixture"], ["--seed", "3"]):
        assert mod.main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "--quick" in err and "--config paper" in err, err


def test_train_toy2d_script_writes_runs_by_default_and_the_reference_only_when_asked(tmp_path, monkeypatch):
    mod = _toy2d_script()
    reference = tmp_path / "reference"
    monkeypatch.setattr(mod, "REFERENCE_DIR", reference)  # stands in for the committed benchmarks/results
    monkeypatch.chdir(tmp_path)

    def fake_run(cfg, progress=True, on_model=None):
        res = {"nfe": list(cfg.nfes), "energy": [1e-3] * len(cfg.nfes), "mse": [1e-2] * len(cfg.nfes), "noise_floor": 0.0}
        return {"config": {"targets": list(cfg.targets), "steps": cfg.steps}, **{t: res for t in cfg.targets}}

    monkeypatch.setattr(mod, "run_experiment", fake_run)
    monkeypatch.setattr(mod, "mmd_plot", lambda results, path: Path(path).write_bytes(b"png"))
    args = ["--targets", "mixture", "--nfes", "1,2", "--no-progress"]
    runs = tmp_path / "runs" / "toy2d"
    assert mod.main(["--quick", "--targets", "mixture", "--no-progress"]) == 0
    assert json.loads((runs / "quick" / "toy2d.json").read_text())["mixture"]["nfe"] == [1, 2, 5, 10, 50, 100]
    assert (runs / "quick" / "mmd_vs_nfe.png").is_file()
    assert not reference.exists() and not (tmp_path / "benchmarks").exists()
    # overrides get their own folder: an experiment does not overwrite the plain run
    assert mod.main(["--config", "paper", "--steps", "7", "--seed", "2", *args]) == 0
    assert json.loads((runs / "paper_nfes1-2_seed2_steps7" / "toy2d.json").read_text())["config"]["steps"] == 7
    assert sorted(p.name for p in runs.iterdir()) == ["paper_nfes1-2_seed2_steps7", "quick"] and not reference.exists()
    # the committed layout, only with --save-reference: toy2d[_CONFIG].json beside toy2d[_CONFIG]/
    assert mod.main(["--quick", "--save-reference", *args]) == 0
    assert (reference / "toy2d_quick.json").is_file() and (reference / "toy2d_quick" / "mmd_vs_nfe.png").is_file()
    assert mod.main(["--config", "paper", "--save-reference", "--targets", "mixture", "--no-progress"]) == 0
    assert (reference / "toy2d.json").is_file() and (reference / "toy2d" / "mmd_vs_nfe.png").is_file()
    assert mod.main(["--quick", "--save-reference", "--out", str(tmp_path / "x"), *args]) == 2


def test_readme_toy2d_commands_name_a_size():
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    commands = [line for line in readme.splitlines() if line.startswith("python scripts/train_toy2d.py")]
    assert commands
    for line in commands:
        assert "--quick" in line or "--config" in line, line


def test_train_generator_takes_any_sampler_and_any_generator() -> None:
    """The 2D API took a target only by name from a module dict and built its own network."""
    from policy.scoring import LossConfig
    from policy.toy2d.train import Toy2DConfig, train_generator

    def ring3d(n: int, g: torch.Generator) -> torch.Tensor:  # a distribution of the user's own, in 3-D
        a = torch.rand(n, generator=g) * 6.2832
        return torch.stack([a.cos(), a.sin(), 0.1 * torch.randn(n, generator=g)], dim=1)

    class Tiny(torch.nn.Module):  # a generator of the user's own: G(t, x_t, xi, cond) -> (B, m, 3)
        noise_shape = (3,)

        def __init__(self) -> None:
            super().__init__()
            self.net = torch.nn.Sequential(torch.nn.Linear(7, 64), torch.nn.SiLU(), torch.nn.Linear(64, 3))

        def forward(self, t, x_t, xi, cond=None):
            m = xi.shape[1]
            h = torch.cat([t[:, None, None].expand(-1, m, 1), x_t[:, None].expand(-1, m, -1), xi], dim=-1)
            return self.net(h)

    cfg = Toy2DConfig(steps=300, warmup_steps=10, population=4, batch_size=64, lr=3e-3)
    loss = LossConfig(kind="energy", lam=1.0, beta=1.0, population=4)
    model, history = train_generator(ring3d, loss, cfg, progress=False, model=Tiny())
    assert isinstance(model, Tiny) and history[0]["loss"] > history[-1]["loss"], history
    x = torch.randn(5, 3)
    assert model(torch.rand(5), x, torch.randn(5, 2, 3)).shape == (5, 2, 3)
    mlp, _ = train_generator(ring3d, loss, Toy2DConfig(steps=2, warmup_steps=1, hidden=16, population=4),
                             progress=False)  # the default MLP sizes itself to the data (3-D here)
    assert mlp.noise_shape == (2,) and mlp(torch.rand(5), x, torch.randn(5, 4, 2)).shape == (5, 4, 3)
