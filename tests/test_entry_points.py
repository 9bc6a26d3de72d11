"""The console commands (pyproject [project.scripts]), the thin scripts/ wrappers that call the
same main(), the entry modules run with ``python -m`` (as the study launches its stages), and
the training configs shipped inside the package."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ENTRY_POINTS = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
WRAPPERS = {  # scripts/<name>.py -> the module whose main() it calls
    "train_policy": "envs.training_cli",
    "eval_rollouts": "envs.evaluation.cli",
    "run_study": "envs.study.cli",
    "generate_demos": "envs.scripted.cli",
    "replay_demos": "envs.scripted.replay_cli",
    "add_object_poses": "envs.libero.object_poses_cli",
    "convert_to_lerobot": "envs.libero.lerobot_cli",
    "probe_route_modes": "envs.study.probe_cli",
    "robot_client_example": "envs.evaluation.robot_client_cli",
    "serve_policy": "policy.serving.cli",
    "train_toy2d": "policy.toy2d.cli",
    "train_image": "policy.image.cli",
}


def test_every_wrapper_has_a_console_command_and_the_commands_resolve() -> None:
    targets = {value.split(":")[0] for value in ENTRY_POINTS.values()}
    assert targets == set(WRAPPERS.values())
    assert all(name.startswith("ddl-") and value.endswith(":main") for name, value in ENTRY_POINTS.items())
    for module in targets:
        assert callable(importlib.import_module(module).main), module


@pytest.mark.parametrize("script", sorted(WRAPPERS))
def test_wrapper_is_thin_and_guarded(script: str) -> None:
    """Only a docstring, the import of main and a guarded call: spawned workers re-import the
    main script, so an unguarded call would start the command again in every worker."""
    tree = ast.parse((REPO / "scripts" / f"{script}.py").read_text())
    body = tree.body
    assert ast.get_docstring(tree)
    imports = [node for node in body if isinstance(node, ast.ImportFrom)]
    assert [(node.module, [a.name for a in node.names]) for node in imports] == [(WRAPPERS[script], ["main"])]
    assert len(body) == 3 and isinstance(body[2], ast.If) and "__main__" in ast.unparse(body[2].test)


def test_no_script_or_module_edits_sys_path() -> None:
    for path in [*(REPO / "scripts").glob("*.py"), *(REPO / "policy").rglob("*.py"), *(REPO / "envs").rglob("*.py")]:
        assert "sys.path.insert" not in path.read_text(), path


@pytest.mark.parametrize("module", sorted({m for m in WRAPPERS.values() if m.startswith("policy.")}))
def test_policy_entry_modules_do_not_import_envs(module: str) -> None:
    source = (REPO / (module.replace(".", "/") + ".py")).read_text()
    names = [n.module or "" for n in ast.walk(ast.parse(source)) if isinstance(n, ast.ImportFrom)]
    names += [a.name for n in ast.walk(ast.parse(source)) if isinstance(n, ast.Import) for a in n.names]
    assert not [n for n in names if n == "envs" or n.startswith(("envs.", "libero", "robosuite"))]


def test_entry_module_runs_with_python_m_outside_the_repository(tmp_path: Path) -> None:
    """How the study launches its stages (envs.study.runner._py): the same help as the wrapper."""
    via_m = subprocess.run([sys.executable, "-m", "envs.training_cli", "--help"], cwd=tmp_path, capture_output=True,
                           text=True, timeout=120)
    via_script = subprocess.run([sys.executable, str(REPO / "scripts" / "train_policy.py"), "--help"], cwd=tmp_path,
                                capture_output=True, text=True, timeout=120)
    assert via_m.returncode == 0 == via_script.returncode and via_m.stdout == via_script.stdout
    assert via_m.stdout.startswith("Train the LIBERO distributional diffusion policy")


def test_configs_are_package_data_and_the_top_level_folder_links_to_them() -> None:
    from policy.training.config import CONFIG_DIR

    assert CONFIG_DIR == Path(importlib.import_module("policy").__file__).parent / "configs"
    assert (CONFIG_DIR / "train_policy.yaml").is_file() and (CONFIG_DIR / "model" / "small.yaml").is_file()
    top = REPO / "configs"
    assert top.is_symlink() and top.resolve() == (REPO / "policy" / "configs").resolve()
    package_data = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["policy"]
    shipped = {p for pattern in package_data for p in CONFIG_DIR.parent.glob(pattern)}
    assert shipped == set(CONFIG_DIR.rglob("*.yaml")) and shipped
