"""Fault suite, bad input and interruptions: every case is refused with one ``error: ...`` line and exit
status 2 before any expensive work, or (Ctrl-C, kill -9) recorded and resumable.

In-process cases run the real Hydra config through ``run_hydra_task``, the body of every Hydra main; the cases
Hydra or the process itself decides (group options, workers, signals) run the console entry point."""

from __future__ import annotations

import errno
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from deephash.baselines.run import run_baseline
from deephash.cli import composition_error, run_hydra_task, unknown_group_option
from deephash.config import CONFIG_PATH
from deephash.evaluate import evaluate
from deephash.index import build
from deephash.retrieval import load_index
from deephash.runs import record_failure
from deephash.search import main as search_main
from deephash.train import train
from deephash.utils import io as io_mod
from tests.conftest import compose_config
from tests.fixtures_data import write_image_tree

FAST = [
    "logger=none",
    "callbacks=none",
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=3",
    "trainer.limit_val_batches=1",
    "trainer.enable_model_summary=false",
    "test=false",
    "evaluate=false",
]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A digits run with its checkpoints, index and reports (about 10 s on 2 cores)."""
    out = tmp_path_factory.mktemp("faults") / "run"
    overrides = [*FAST, "callbacks=default", "evaluate=true", "retrieval.modes=[hamming]"]
    overrides.remove("callbacks=none")
    overrides.remove("evaluate=false")
    metrics = train(compose_config("train", overrides, out))
    assert metrics["status"] == "completed"
    return out


def _indexed_ckpt(run: Path) -> str:
    """The checkpoint the run's index was built with."""
    manifest = json.loads((run / "index" / "manifest.json").read_text())
    return manifest.get("checkpoint") or manifest["meta"]["checkpoint"]


def _refused(capsys, task, config: str, overrides: list[str], out: Path) -> str:
    """Run ``task`` as its Hydra main would; it must exit 2 with one ``error:`` line, which is returned."""
    cfg = compose_config(config, overrides, out)
    out.mkdir(parents=True, exist_ok=True)  # Hydra creates the run directory before the task starts
    with pytest.raises(SystemExit) as exit_info:
        run_hydra_task(task, cfg, on_failure=record_failure)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in err, err
    return errors[0]


def _cli(*args: str, timeout: int = 240, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "offline", "HYDRA_FULL_ERROR": ""}
    return subprocess.run(
        [sys.executable, "-m", *args], capture_output=True, text=True, timeout=timeout, env=env, cwd=cwd
    )


def _one_error_line(proc: subprocess.CompletedProcess) -> str:
    """The one ``error:`` line of a refused command: it ends stderr (where only log lines precede it)."""
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    assert "Traceback" not in proc.stderr and errors == lines[-1:], proc.stderr[-3000:]
    return errors[0]


# ---- config values: refused before any data is read ------------------------------------------------------


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("retrieval.ks=[0,10]", r"retrieval.ks entry \(in \[0, 10\]\) must be an integer >= 1, got 0"),
        (
            "retrieval.modes=[hamming,foo]",
            r"retrieval.modes must list search modes among hamming, .*\['foo'\]",
        ),
        ("retrieval.radius=-1", r"retrieval.radius must be an integer >= 0, got -1"),
        ("retrieval.min_pool=0", r"retrieval.min_pool must be an integer >= 1, got 0"),
        ("retrieval.pool_size=20000", r"min_pool <= pool_size <= max_pool, got 100, 20000, 10000"),
        ("retrieval.coarse.method=foo", r"retrieval.coarse.method must be one of flat, multihash, hash"),
        (
            "retrieval.coarse.method=ivf ++retrieval.coarse.params={nflip:1}",
            r"retrieval.coarse.params: ivf index takes nlist, nprobe, pad, seed, train_rows; got unknown nflip",
        ),
        ("data.n_queries=0", r"data.n_queries must be an integer >= 1, got 0"),
        ("data.val_size=2.5", r"data.val_size must be a fraction in \[0, 1\) or a count >= 0"),
        ("data.protocol=foo", r"data.protocol must be one of paper, "),  # raised in the constructor
        ("trainer.max_epochs=-5", r"trainer.max_epochs \(-1: no limit\) must be an integer >= 1, got -5"),
        ("seed=abc", r"seed must be an integer in 0..4294967295, got 'abc'"),
        ("seed=null", r"seed must be an integer in 0..4294967295, got null"),
        (
            "model=alexnet model.optimizer.momentum=1.5",
            r"model.optimizer.momentum must be a number in \[0, 1\], got 1.5",
        ),
    ],
)
def test_train_config_errors_are_one_line(capsys, tmp_path, override, message) -> None:
    line = _refused(capsys, train, "train", [*FAST, *override.split(" ")], tmp_path / "run")
    assert re.search(message, line), line
    assert not (tmp_path / "run" / "checkpoints").exists()  # nothing was trained
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["status"] == "failed"


def test_folder_constructor_error_is_unwrapped(capsys, tmp_path) -> None:
    """A check only the datamodule's constructor makes comes out as its own line, not Hydra's
    "Error in call to target" report."""
    write_image_tree(tmp_path / "images", per_class=3)
    line = _refused(
        capsys, train, "train", [*FAST, "data=folder", f"data.root={tmp_path / 'images'}", "data.test_fraction=2"],
        tmp_path / "run",
    )  # fmt: skip
    assert line == "error: data.test_fraction must be a fraction in (0, 1), got 2"


def test_resume_with_other_bits_names_both(capsys, trained, tmp_path) -> None:
    ckpt = trained / "checkpoints" / "last.ckpt"
    line = _refused(capsys, train, "train", [*FAST, "model.bits=32", f"ckpt_path={ckpt}"], tmp_path / "run")
    assert f"ckpt_path {ckpt} was trained with model.net.bits=48 but this run has model.net.bits=32" in line


def _checkpoint_readers(ckpt: Path, tmp_path: Path) -> list[tuple]:
    """(task, config, overrides) of every Hydra main that reads ``ckpt``: resume, evaluation, indexing."""
    return [
        (train, "train", [*FAST, f"ckpt_path={ckpt}"]),
        (evaluate, "eval", ["data=digits", "logger=none", f"ckpt_path={ckpt}", f"run_dir={tmp_path / 'e'}"]),
        (build, "index", ["data=digits", f"ckpt_path={ckpt}", f"index_dir={tmp_path / 'ix'}"]),
    ]


def test_non_checkpoint_files_are_refused_everywhere(capsys, tmp_path) -> None:
    fake = tmp_path / "model.ckpt"
    fake.write_text("not a checkpoint\n")
    expected = rf"{re.escape(str(fake))} is not a deephash checkpoint \(.*\); expected a .ckpt written by deephash-train"
    for task, config, overrides in _checkpoint_readers(fake, tmp_path):
        assert re.fullmatch(
            f"error: {expected}", _refused(capsys, task, config, overrides, tmp_path / config)
        )
    assert not (tmp_path / "ix").exists()


def test_a_checkpoint_with_a_flipped_weight_byte_is_refused_everywhere(capsys, trained, tmp_path) -> None:
    """torch.load does not check the archive's CRC-32s: one flipped byte in a weight loads as another
    weight. Resume, evaluation, indexing and search must refuse the file instead."""
    import zipfile

    bad = tmp_path / "copy.ckpt"
    data = bytearray((trained / "checkpoints" / "last.ckpt").read_bytes())
    with zipfile.ZipFile(trained / "checkpoints" / "last.ckpt") as archive:
        largest = max(archive.infolist(), key=lambda info: info.file_size)
    name_and_extra = int.from_bytes(data[largest.header_offset + 26 : largest.header_offset + 30], "little")
    start = largest.header_offset + 30 + (name_and_extra & 0xFFFF) + (name_and_extra >> 16)
    data[start + largest.file_size // 2] ^= 0x01  # a stored (uncompressed) float's lowest mantissa bit
    bad.write_bytes(bytes(data))
    expected = f"error: {bad} is damaged: {largest.filename} does not match the CRC-32 the archive records"
    for task, config, overrides in _checkpoint_readers(bad, tmp_path):
        assert _refused(capsys, task, config, overrides, tmp_path / config).startswith(expected)
    image = tmp_path / "q.png"
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(image)
    with pytest.raises(SystemExit):
        search_main(["--index", str(trained / "index"), "--ckpt", str(bad), str(image)])
    assert capsys.readouterr().err.startswith(expected)


def test_eval_index_and_baseline_configs_are_checked_first(capsys, trained, tmp_path) -> None:
    ckpt = trained / "checkpoints" / "last.ckpt"
    line = _refused(capsys, evaluate, "eval", [f"ckpt_path={ckpt}", "retrieval.ks=[0]"], tmp_path / "e")
    assert "retrieval.ks entry (in [0]) must be an integer >= 1, got 0" in line
    line = _refused(capsys, build, "index", [f"ckpt_path={ckpt}", "split=foo"], tmp_path / "i")
    assert line == "error: split must be one of train, val, test, query, database, got 'foo'"
    line = _refused(capsys, run_baseline, "baseline", ["logger=none", "retrieval.radius=-2"], tmp_path / "b")
    assert line == "error: retrieval.radius must be an integer >= 0, got -2"


def test_a_required_value_not_given_is_named_with_what_it_expects(capsys, tmp_path) -> None:
    """``ckpt_path: ???`` and ``data.root: ???`` are asked for by name, not reported as OmegaConf's
    MissingMandatoryValue traceback from wherever the task first reads them."""
    expected = "error: ckpt_path is required and was not given (expected a .ckpt written by deephash-train, "
    assert _refused(capsys, evaluate, "eval", ["data=digits"], tmp_path / "e").startswith(expected)
    assert _refused(capsys, build, "index", ["data=digits"], tmp_path / "i").startswith(expected)
    line = _refused(capsys, train, "train", [*FAST, "data=folder"], tmp_path / "t")
    assert line.startswith("error: data.root is required and was not given (expected the folder of class")


def test_an_index_is_never_written_over_something_that_is_not_one(capsys, trained, tmp_path) -> None:
    """``index_dir`` pointing at the run itself, a file or a folder of data is refused before encoding;
    each is left as it was (the commit's swap would have deleted it)."""
    ckpt = trained / "checkpoints" / "last.ckpt"
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "keep.txt").write_text("mine")
    notes = tmp_path / "notes.txt"
    notes.write_text("mine")
    before = sorted(p.name for p in trained.iterdir())
    for target in (trained, photos, notes):
        line = _refused(capsys, build, "index", [f"ckpt_path={ckpt}", f"index_dir={target}"], tmp_path / "i")
        assert str(target) in line and ("not an index" in line or "not a directory" in line), line
    line = _refused(
        capsys, evaluate, "eval", [f"ckpt_path={ckpt}", f"retrieval.index_dir={photos}"], tmp_path / "e"
    )
    assert "not an index" in line
    assert sorted(p.name for p in trained.iterdir()) == before
    assert (photos / "keep.txt").read_text() == "mine" and notes.read_text() == "mine"


@pytest.mark.parametrize(
    ("fail", "code", "reason"),
    [("fsync", errno.ENOSPC, "No space left on device"), ("mkstemp", errno.EACCES, "Permission denied")],
)
def test_full_disk_or_denied_write_is_one_line_and_leaves_no_temp_files(
    capsys, monkeypatch, tmp_path, fail, code, reason
) -> None:
    def refuse(*args, **kwargs):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(io_mod.os if fail == "fsync" else io_mod.tempfile, fail, refuse)
    line = _refused(capsys, train, "train", FAST, tmp_path / "run")
    assert line.startswith("error: cannot write ") and f": {reason} (" in line
    assert not list((tmp_path / "run").rglob("*.tmp"))


# ---- the process: Hydra's own errors, DataLoader workers, file modes -------------------------------------


def test_unknown_group_option_is_one_line_with_the_choices(tmp_path) -> None:
    line = _one_error_line(_cli("deephash.train", "data=foo", f"hydra.run.dir={tmp_path}"))
    assert line == (
        "error: Could not find 'data/foo': data=foo is not an option of data; "
        "expected one of: cifar10, digits, folder, mnist"
    )
    assert unknown_group_option(["ckpt_path=x", "retrieval=fast"], Path(CONFIG_PATH)) == (
        "Could not find 'retrieval/fast': retrieval=fast is not an option of retrieval; expected one of: default"
    )
    for fine in (["model=smallcnn,alexnet"], ["experiment=null"], ["hydra/launcher=basic"], ["+seed=3"]):
        assert unknown_group_option(fine, Path(CONFIG_PATH)) is None


def test_an_override_hydra_cannot_apply_is_one_line(tmp_path) -> None:
    """A key the config lacks, a malformed override, an empty group choice: one ``error:`` line and status
    2 before anything runs, where Hydra prints a multi-line report and exits 1."""
    line = _one_error_line(_cli("deephash.train", "model.lr=0.1", f"hydra.run.dir={tmp_path / 'r'}"))
    assert line == (
        "error: Could not override 'model.lr'. To append to your config use +model.lr=0.1 "
        "(Key 'lr' is not in struct)"
    )
    assert not (tmp_path / "r").exists()  # refused before Hydra made the run directory
    cases = {
        ("eval", "retrieval.foo=3"): "Could not override 'retrieval.foo'. ",
        (
            "train",
            "trainer.max_epochs",
        ): "Error parsing override 'trainer.max_epochs' missing EQUAL at '<EOF>'",
        ("train", "model.bits=[1,2"): "Error parsing override 'model.bits=[1,2': no viable alternative",
        (
            "train",
            "model=",
        ): "In 'train': Could not find 'model/' Available options in 'model': alexnet, mnistcnn,",
        ("train", "+seed=3"): "Could not append to config. An item is already at 'seed'.",
        ("index", "hydra.foo=1"): "Could not override 'hydra.foo'.",
        ("baseline", "-m", "method=lsh", "bitz=16,32"): "Could not override 'bitz'.",
        ("train", "data.root=/tmp/dàta"): (
            "the override data.root=/tmp/dàta has characters beyond ASCII, which Hydra reads only in a quoted "
            """value: pass data.root='"/tmp/dàta"'"""
        ),
    }
    for (config, *argv), start in cases.items():
        problem = composition_error(config, argv, CONFIG_PATH)
        assert problem is not None and problem.startswith(start) and "\n" not in problem, problem
    for config, argv in [  # what composes must pass: sweeps by their first value, Hydra flags left to Hydra
        ("train", ["-m", "model.net.bits=32,64", "seed=range(0,3)", "data=digits,mnist"]),
        ("train", ["experiment=paper_mnist_48", "++seed=3", "~logger", "hydra.run.dir=/tmp/x y"]),
        ("train", ["--cfg", "job", "model.foo=1"]),
        ("eval", ["ckpt_path=a.ckpt", "retrieval.modes=[hamming,euclidean]", "data=folder", "data.root=x"]),
        ("baseline", ["-m", "method=lsh,itq", "bits=16,32"]),
        ("train", ['data.root="/tmp/dàta"', "data=folder"]),  # quoted, as the message says
    ]:
        assert composition_error(config, argv, CONFIG_PATH) is None, argv


@pytest.fixture
def bad_tree(tmp_path) -> Path:
    root = tmp_path / "images"
    write_image_tree(root, per_class=8)
    for path in sorted((root / "cat").glob("cat_0[0-2].*")):  # three: at least one is trained on
        path.write_bytes(b"not an image " * 20)
    return root


def _folder(root: Path, tmp_path: Path) -> list[str]:
    return [
        "data=folder", f"data.root={root}", f"data.cache_dir={tmp_path / 'cache'}", "data.n_queries=2",
        "data.transform=native", "data.image_size=16", "data.batch_size=8",
    ]  # fmt: skip


def test_bad_image_in_a_worker_is_one_line(bad_tree, tmp_path) -> None:
    proc = _cli(
        "deephash.train", *FAST, *_folder(bad_tree, tmp_path), "data.on_bad_image=error", "data.num_workers=2",
        f"hydra.run.dir={tmp_path / 'run'}",
    )  # fmt: skip
    line = _one_error_line(proc)
    assert re.match(
        rf"error: cannot read image {re.escape(str(bad_tree / 'cat'))}/cat_0[0-2]\.\w+: ", line
    ), line


def test_skipped_bad_images_leave_sizes_that_agree_with_the_index(bad_tree, tmp_path) -> None:
    out = tmp_path / "run"
    overrides = [*FAST, *_folder(bad_tree, tmp_path), "data.num_workers=0", "retrieval.modes=[hamming]"]
    overrides[overrides.index("evaluate=false")] = "evaluate=true"
    metrics = train(compose_config("train", overrides, out))
    written = json.loads((out / "metrics.json").read_text())
    index = load_index(out / "index")
    assert written["bad_images"] == 3 and not any(
        i.startswith("cat/cat_0") and i[9] in "012" for i in index.ids
    )
    assert (
        written["data"]["sizes"]["database"] == written["n_database"] == index.count == metrics["n_database"]
    )
    assert written["data"]["sizes"]["query"] == written["n_queries"]


def test_run_files_follow_the_umask(trained) -> None:
    expected = 0o666 & ~io_mod.current_umask()
    for name in ("metrics.json", "config.yaml", "precision_at_k.png", "classes.json"):
        assert (trained / name).stat().st_mode & 0o777 == expected, name


# ---- search: bad query images, checkpoints and devices ---------------------------------------------------


def test_search_refuses_bad_checkpoints_images_and_devices(capsys, trained, tmp_path) -> None:
    ckpt = _indexed_ckpt(trained)
    image = tmp_path / "q.png"
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(image)
    bomb = tmp_path / "bomb.png"
    Image.new("L", (12_000, 12_000)).save(bomb)  # 144 megapixels in a 140 KB file
    fake = tmp_path / "fake.ckpt"
    fake.write_bytes(b"PK\x03\x04 a broken zip")

    def search(*args: str) -> str:
        with pytest.raises(SystemExit) as exit_info:
            search_main(["--index", str(trained / "index"), *args])
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
        return err.strip()

    line = search("--ckpt", ckpt, str(bomb))
    assert line == (
        f"error: query image {bomb} is too large to decode safely (144,000,000 pixels; at most "
        f"{Image.MAX_IMAGE_PIXELS:,} pixels); resize it first"
    )
    assert search("--ckpt", str(fake), str(image)).startswith(f"error: {fake} is not a deephash checkpoint (")
    if torch.cuda.device_count() <= 7:
        line = search("--ckpt", ckpt, "--device", "cuda:7", str(image))
        assert re.fullmatch(
            r"error: device 'cuda:7' requested but this machine has (no CUDA device|\d CUDA).*", line
        )
    assert search("--ckpt", ckpt, "--device", "tpu:0", str(image)).startswith("error: unknown device 'tpu:0'")
    assert search("--ckpt", ckpt, str(tmp_path)) == (
        f"error: query {tmp_path} is a folder: pass image files (a shell glob such as {tmp_path}/*.jpg does), "
        "or index the folder with deephash-index build images=<folder>"
    )
    # flags: one line naming the flag, before the checkpoint is read
    assert search("--ckpt", ckpt, str(image), "--pool-size", "0") == (
        "error: --pool-size must be >= 1, got 0 (see deephash-search --help)"
    )
    assert search("--ckpt", ckpt, str(image), "--min-pool", "500", "--max-pool", "10") == (
        "error: --min-pool <= --pool-size <= --max-pool is required, got 500, 1000, 10 (see deephash-search --help)"
    )
    assert search("--ckpt", ckpt, str(image), "--mode", "fast") == (
        "error: argument --mode: invalid choice: 'fast' (choose from 'hamming', 'hamming_radius', "
        "'hierarchical', 'euclidean') (see deephash-search --help)"
    )
    search_main(["--index", str(trained / "index"), "--ckpt", ckpt, str(image), "--pool-size", "20000"])
    assert json.loads(capsys.readouterr().out)[0]["results"]  # a bound not given makes room for the pool size


def test_index_and_eval_refuse_a_file_where_a_directory_belongs(capsys, trained, tmp_path) -> None:
    from deephash.index import main as index_main

    with pytest.raises(SystemExit) as exit_info:
        index_main(["info", str(trained / "metrics.json")])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip() == (
        f"error: {trained / 'metrics.json'} is a file, not an index: expected the directory deephash-index "
        "build wrote"
    )
    ckpt = trained / "checkpoints" / "last.ckpt"
    line = _refused(
        capsys, evaluate, "eval", [f"ckpt_path={ckpt}", f"run_dir={trained / 'metrics.json'}"], tmp_path
    )
    assert line.startswith(f"error: run_dir {trained / 'metrics.json'} is a file; expected a directory")
    line = _refused(capsys, build, "index", [f"ckpt_path={ckpt}", "batch_size=abc"], tmp_path / "i")
    assert line == "error: batch_size must be an integer >= 1, got 'abc'"


# ---- interruptions ----------------------------------------------------------------------------------------


def _start_training(run: Path, *overrides: str) -> subprocess.Popen:
    args = [
        "deephash.train", "logger=none", "trainer.enable_model_summary=false", "test=false", "evaluate=false",
        "callbacks.rich_progress_bar=null", f"hydra.run.dir={run}", *overrides,
    ]  # fmt: skip
    env = {**os.environ, "WANDB_MODE": "offline"}
    return subprocess.Popen(
        [sys.executable, "-m", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        # a shell starting these tests in the background makes its children ignore SIGINT, and Python
        # keeps an ignored SIGINT ignored: Ctrl-C's default action again, so Python installs its handler
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.1)


@pytest.mark.slow
def test_output_into_a_pipe_closed_early_ends_quietly(trained, tmp_path) -> None:
    """``deephash-search ... | head`` and ``deephash-index info ... | head``: the reader is gone before the
    output is written; the command stops without a BrokenPipeError traceback or an "Exception ignored"
    report from the interpreter's flush at exit."""
    image = tmp_path / "q.png"
    Image.fromarray(np.full((8, 8), 90, np.uint8)).save(image)
    commands = [
        ["deephash.index", "info", str(trained / "index")],
        ["deephash.search", "--index", str(trained / "index"), "--ckpt", _indexed_ckpt(trained), str(image)],
    ]
    env = {**os.environ, "WANDB_MODE": "disabled"}
    for args in commands:
        proc = subprocess.Popen(
            [sys.executable, "-m", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            cwd=tmp_path,
        )
        proc.stdout.close()  # the reader goes away at once, like head after its first lines
        err = proc.stderr.read().decode()
        assert proc.wait(timeout=120) == 1, err
        assert "Traceback" not in err and "BrokenPipe" not in err and "Exception ignored" not in err, err


def test_every_console_script_runs_its_command_and_ctrl_c_in_its_imports_is_one_line(
    capsys, monkeypatch
) -> None:
    """The console scripts import their command when run: each names a command module with a ``main``, and
    a Ctrl-C while torch and Lightning import is ``interrupted`` and status 130, not a traceback."""
    import importlib

    import tomllib

    from deephash import scripts

    table = tomllib.loads((Path(__file__).resolve().parent.parent / "pyproject.toml").read_text())
    for name, target in table["project"]["scripts"].items():
        module, function = target.split(":")
        assert module == "deephash.scripts", name
        script = getattr(scripts, function)  # partial(_run, "<command module>")
        assert script.func is scripts._run, name
        assert callable(importlib.import_module(script.args[0]).main), name

    def interrupted(_module: str) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(scripts.importlib, "import_module", interrupted)
    with pytest.raises(SystemExit) as exit_info:
        scripts.train()
    assert exit_info.value.code == 130 and capsys.readouterr().err == "interrupted\n"


def test_ctrl_c_is_recorded_as_interrupted_with_where_to_resume(tmp_path) -> None:
    run = tmp_path / "run"
    proc = _start_training(run, "trainer.max_epochs=1000")
    last = run / "checkpoints" / "last.ckpt"
    _wait_for(last, proc)
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in err
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["status"] == "interrupted" and metrics["resume"] == str(last)
    assert metrics.get("error") is None


@pytest.mark.slow
def test_kill_9_mid_epoch_then_resume_to_completion(tmp_path) -> None:
    run = tmp_path / "run"
    proc = _start_training(run, "trainer.max_epochs=3")
    last = run / "checkpoints" / "last.ckpt"
    _wait_for(last, proc)
    time.sleep(0.3)  # into the second epoch
    proc.kill()
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    epoch = torch.load(last, map_location="cpu", weights_only=True, mmap=True)["epoch"]
    assert epoch < 2
    resumed = _start_training(run, "trainer.max_epochs=3", f"ckpt_path={last}")
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err[-3000:]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["epochs"] == 3


@pytest.mark.parametrize(
    ("command", "where"),
    [
        (("deephash.train", "logger=none", "hydra.run.dir={file}/run"), "{file}/run: Not a directory"),
        (("deephash.train", "logger=none", "hydra.run.dir={file}"), "{file}: File exists"),
        (("deephash.baseline", "logger=none", "hydra.run.dir={file}/run"), "{file}/run: Not a directory"),
    ],
)
def test_an_output_path_under_a_regular_file_is_one_line(tmp_path, command, where) -> None:
    file = tmp_path / "notes.txt"
    file.write_text("a file, not a directory")
    line = _one_error_line(_cli(*(part.format(file=file) for part in command)))
    assert line == (
        f"error: cannot create {where.format(file=file)} (a file stands where the path needs a directory); "
        "choose another output path"
    )


def test_names_that_are_not_utf8_are_refused_by_name_before_any_image_is_read(tmp_path) -> None:
    """A Latin-1 class folder or file name (an old camera's, an archive's): one line naming it, from the
    folder datamodule's scan and from the plain image folder ``deephash-index build images=`` encodes."""
    from deephash.data.scan import scan_tree
    from deephash.retrieval.searcher import image_files
    from deephash.utils.errors import DataError

    root = os.fsencode(tmp_path / "photos")
    for folder in (b"cat", b"caf\xe9"):
        os.makedirs(os.path.join(root, folder))
        for i in range(2):
            Image.fromarray(np.full((8, 8), 60 * i, np.uint8)).save(
                os.fsdecode(os.path.join(root, folder, b"%d.png" % i))
            )
    with pytest.raises(
        DataError, match=r"1 class folder names under .*photos are not UTF-8, first: b'caf\\xe9'"
    ):
        scan_tree(os.fsdecode(root))
    os.rename(os.path.join(root, b"caf\xe9"), os.path.join(root, b"dog"))
    os.rename(os.path.join(root, b"dog", b"1.png"), os.path.join(root, b"dog", b"\xe9t\xe9.png"))
    for scan in (lambda: scan_tree(os.fsdecode(root)), lambda: image_files(os.fsdecode(root))):
        with pytest.raises(
            DataError,
            match=r"1 file names under .*photos are not UTF-8, first: b'dog/\\xe9t\\xe9.png'; rename",
        ):
            scan()
