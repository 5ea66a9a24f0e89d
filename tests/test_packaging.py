"""The package as a user installs it: a wheel that carries its Hydra configs, console scripts that answer
``--version`` and ``--help``, and a ``make help`` that prints no colour codes into a pipe."""

from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import tomllib
from setuptools import find_packages

from deephash import __version__
from deephash.config import CONFIG_PATH

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
SCRIPTS = PYPROJECT["project"]["scripts"]


def _run(cmd: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: int = 300):
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def test_source_checkout_composes_from_the_top_level_conf():
    assert Path(CONFIG_PATH) == REPO / "conf"


def test_pyproject_lists_every_package_and_ships_the_configs():
    """The package list is explicit (conf/ maps onto deephash.conf): a new subpackage must be added to it."""
    listed = set(PYPROJECT["tool"]["setuptools"]["packages"])
    assert listed == set(find_packages(str(REPO), include=["deephash*"])) | {"deephash.conf"}
    assert PYPROJECT["tool"]["setuptools"]["package-dir"] == {"deephash.conf": "conf"}


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """The wheel built from a copy of the sources, installed with ``--target`` outside the source tree."""
    root = tmp_path_factory.mktemp("wheel")
    src = root / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
    shutil.copytree(REPO / "deephash", src / "deephash", ignore=ignore)
    shutil.copytree(REPO / "conf", src / "conf", ignore=ignore)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    proc = _run([*pip, "wheel", "--no-deps", "--no-build-isolation", ".", "-w", str(root / "dist")], src)
    assert proc.returncode == 0, proc.stderr
    (wheel,) = (root / "dist").glob("deephash-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    yaml_in_wheel = sorted(n.removeprefix("deephash/conf/") for n in names if n.startswith("deephash/conf/"))
    assert yaml_in_wheel == sorted(str(p.relative_to(REPO / "conf")) for p in (REPO / "conf").rglob("*.yaml"))
    target = root / "site"
    proc = _run([*pip, "install", "--no-deps", "--target", str(target), str(wheel)], root)
    assert proc.returncode == 0, proc.stderr
    env = {**os.environ, "PYTHONPATH": str(target), "WANDB_MODE": "offline"}
    return target, env


def test_installed_wheel_runs_hydra_tools_from_another_directory(installed, tmp_path):
    target, env = installed
    where = _run(
        [sys.executable, "-c", "import deephash.config as c; print(c.__file__, c.CONFIG_PATH)"], tmp_path, env
    )
    module_file, config_path = where.stdout.split()
    assert Path(module_file).is_relative_to(target) and Path(config_path) == target / "deephash" / "conf"

    job = _run(
        [str(target / "bin" / "deephash-train"), "data=digits", "model.bits=16", "--cfg", "job"],
        tmp_path,
        env,
    )
    assert job.returncode == 0, job.stderr
    assert "_target_: deephash.data.digits.DigitsDataModule" in job.stdout and "bits: 16" in job.stdout

    run_dir = tmp_path / "run"
    train = _run(
        [
            str(target / "bin" / "deephash-train"),
            "data=digits",
            "trainer.max_epochs=1",
            "trainer.limit_train_batches=2",
            "trainer.limit_val_batches=1",
            "test=false",
            "evaluate=false",
            "logger=none",
            "callbacks=none",
            f"hydra.run.dir={run_dir}",
        ],
        tmp_path,
        env,
    )
    assert train.returncode == 0, train.stderr[-3000:]
    assert (run_dir / "config.yaml").is_file() and (run_dir / "metrics.json").is_file()


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_every_console_script_answers_version(script, monkeypatch, capsys):
    """Hydra mains read sys.argv (Hydra would take ``--version`` for an override), argparse mains argv."""
    module, func = SCRIPTS[script].split(":")
    monkeypatch.setattr(sys, "argv", [script, "--version"])
    try:
        getattr(importlib.import_module(module), func)()
    except SystemExit as exit_:
        assert exit_.code in (0, None)
    assert capsys.readouterr().out.strip() == f"{script} (deephash) {__version__}"


@pytest.mark.parametrize("args", [["--help"], ["info", "--help"], ["build", "--help"]])
def test_index_help_is_real_help(args, capsys):
    from deephash.index import main

    with pytest.raises(SystemExit) as exit_:
        main(args)
    out = capsys.readouterr().out
    assert exit_.value.code == 0 and out.startswith("usage: deephash-index")
    expected = {"--help": "describe a saved index", "info": "INDEX_DIR", "build": "images=DIR"}[args[0]]
    assert expected in out


def test_make_help_prints_no_colour_codes_into_a_pipe():
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    proc = _run(["make", "--no-print-directory", "-s", "help"], REPO)
    assert proc.returncode == 0 and "\033" not in proc.stdout
    assert "demo" in proc.stdout and "install" in proc.stdout
