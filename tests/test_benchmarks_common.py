"""The helpers every benchmark shares (deephash/benchmarks/common.py)."""

from __future__ import annotations

import argparse
import importlib
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
from rich.table import Table

from deephash.benchmarks import common
from deephash.retrieval.codes import hamming_distance_matrix
from deephash.utils.errors import ConfigError


def test_best_of_interleaves_and_keeps_the_minimum(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    # a fake clock: each call of "slow" lasts 3 s, "fast" 1 s; the third round of "slow" only 2 s
    durations = {"slow": iter([3.0, 3.0, 2.0]), "fast": iter([1.0, 1.0, 1.0])}
    clock = [0.0]
    monkeypatch.setattr(common.time, "perf_counter", lambda: clock[0])
    monkeypatch.setattr(common.time, "process_time", lambda: clock[0] / 2)

    def timed(name: str):
        def fn() -> int:
            calls.append(name)
            clock[0] += next(durations[name])
            return len(calls)

        return fn

    best = common.best_of({"slow": timed("slow"), "fast": timed("fast")}, repeat=3)
    assert calls == ["slow", "fast"] * 3
    assert (best["slow"].wall, best["slow"].cpu, best["slow"].result) == (2.0, 1.0, 5)
    assert (best["fast"].wall, best["fast"].cpu, best["fast"].result) == (1.0, 0.5, 6)
    assert common.qps(50, 0.5) == 100 and common.qps(50, 0.0) == float("inf")


@pytest.mark.parametrize("bits", [12, 48, 128])
def test_random_codes_have_zero_padding_and_half_set_bits(bits: int) -> None:
    codes = common.random_codes(np.random.default_rng(0), 4000, bits)
    assert codes.shape == (4000, -(-bits // 8)) and codes.dtype == np.uint8
    unpacked = np.unpackbits(codes, axis=1)
    assert not unpacked[:, bits:].any()
    assert abs(unpacked[:, :bits].mean() - 0.5) < 0.02


def test_clustered_codes_have_near_neighbours(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(common, "_CHUNK", 999)  # several generation chunks
    rng = np.random.default_rng(7)
    db = common.clustered_codes(rng, 5000, 48, cluster_size=500, flip_prob=0.05)
    assert db.shape == (5000, 6) and db.dtype == np.uint8
    # ten clusters: each code is close to many others, unlike random codes (about 24 bits apart)
    nearest = np.sort(hamming_distance_matrix(db[:50], db), axis=1)[:, 10]
    assert nearest.max() <= 12
    uniform = common.random_codes(rng, 5000, 48)
    assert np.sort(hamming_distance_matrix(uniform[:50], uniform), axis=1)[:, 10].min() > 12


def test_check_disk_suggests_a_size_that_fits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(common.shutil, "disk_usage", lambda path: usage._replace(free=(1 << 30) + 10_500_000))
    assert common.check_disk(tmp_path, 10_000, 1000, "ten thousand rows") == 10_000_000
    with pytest.raises(ConfigError) as err:
        common.check_disk(tmp_path, 20_000, 1000, "twenty thousand rows", "--n-files")
    assert str(err.value) == (
        f"{tmp_path} has 1.1 GB free but twenty thousand rows needs 0.0 GB (+1 GB margin): "
        "pass --n-files 10000 or less, or another --workdir"
    )


def test_options_quick_sizes_and_positive_checks() -> None:
    def add(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--n", type=int, nargs="+", default=[10])
        parser.add_argument("--repeat", type=int, default=3)
        parser.add_argument("--quick", action="store_true")

    args = common.parse_args("demo", "Demo benchmark.\n\nDetails.", add, ["--n", "5", "7"])
    assert args.n == [5, 7] and args.repeat == 3
    common.apply_quick(args, {"repeat": 1})
    assert args.repeat == 3
    quick = common.parse_args("demo", None, add, ["--quick"])
    common.apply_quick(quick, {"repeat": 1})
    assert quick.repeat == 1
    explicit = common.parse_args("demo", None, add, ["--quick", "--repeat=5", "--n", "4"])
    common.apply_quick(explicit, {"repeat": 1, "n": [2]})
    assert explicit.repeat == 5 and explicit.n == [4]  # a size given beside --quick is kept
    common.require_positive(args, "n", "repeat")
    args.n = [5, 0]
    with pytest.raises(ConfigError, match="^--n must be positive, got 0$"):
        common.require_positive(args, "repeat", "n")


def test_help_names_the_subcommand(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        common.parse_args("demo", "Demo benchmark.\n\nDetails.", lambda parser: None, ["--help"])
    out = capsys.readouterr().out
    assert out.startswith("usage: deephash-bench demo") and "Demo benchmark." in out and "Details" not in out


def test_finish_prints_the_table_and_writes_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    table = Table(title="demo")
    table.add_column("x")
    table.add_row("42")
    results = {"a": 1, "b": [np.float32(0.5)]}
    assert common.finish(results, table, tmp_path / "out" / "r.json") is results
    assert json.loads((tmp_path / "out" / "r.json").read_text()) == {"a": 1, "b": [0.5]}
    assert "demo" in capsys.readouterr().out
    common.finish(results, table, None)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["r.json"]


def test_shared_options_are_added_only_where_asked() -> None:
    def full(parser: argparse.ArgumentParser) -> None:
        common.add_shared_arguments(
            parser, out=Path("x.json"), quick={"n": 1}, repeat=3, threads="FAISS threads", workdir="files go"
        )

    args = common.parse_args("demo", None, full, [])
    assert (args.repeat, args.threads, args.workdir, args.seed, args.out, args.quick) == (
        3,
        None,
        None,
        0,
        Path("x.json"),
        False,
    )
    bare = common.parse_args("demo", None, lambda p: common.add_shared_arguments(p, out=None, seed=False), [])
    assert vars(bare).keys() == {"out", "given_options"} and bare.out is None


def test_run_benchmark_parses_runs_and_turns_user_errors_into_status_2(
    capsys: pytest.CaptureFixture[str],
) -> None:
    def add(parser: argparse.ArgumentParser) -> None:
        common.add_shared_arguments(parser, out=None, repeat=1)

    seen: list[argparse.Namespace] = []
    assert common.run_benchmark("demo", None, add, seen.append, ["--repeat", "2"]) == 0
    assert seen[0].repeat == 2

    def refuse(args: argparse.Namespace) -> None:
        raise ConfigError("--repeat must be positive, got 0")

    with pytest.raises(SystemExit) as exit_info:
        common.run_benchmark("demo", None, add, refuse, [])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip() == "error: --repeat must be positive, got 0"


def test_results_table_aligns_the_named_columns_left() -> None:
    table = common.results_table("demo", ("measure", "value"), left={"measure"}, caption="note")
    assert [c.justify for c in table.columns] == ["left", "right"]
    assert all(c.no_wrap for c in table.columns) and table.caption == "note"


def test_work_dir_is_the_option_or_the_temp_dir_and_exists(tmp_path: Path) -> None:
    assert common.work_dir(tmp_path / "a" / "b") == tmp_path / "a" / "b" and (tmp_path / "a" / "b").is_dir()
    assert common.work_dir(None) == Path(tempfile.gettempdir())


RUNNERS = {
    "retrieval": "run_retrieval",
    "eval": "run_eval_bench",
    "memory": "run_memory_bench",
    "sublinear": "run_sublinear_bench",
    "scan": "run_scan_bench",
}


@pytest.mark.parametrize("name", list(RUNNERS))
@pytest.mark.parametrize("where", ["under_a_file", "a_directory"])
def test_unwritable_out_fails_before_the_benchmark_runs(
    name: str, where: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A --out that cannot take the JSON file is one line and status 2 up front, not a traceback after the
    benchmark has run for minutes (nothing is timed: the runner is never reached)."""
    from deephash import bench

    (tmp_path / "file").write_text("")
    out = tmp_path / "file" / "results.json" if where == "under_a_file" else tmp_path
    module = importlib.import_module(bench.COMMANDS[name])
    monkeypatch.setattr(module, RUNNERS[name], lambda *a, **k: pytest.fail("the benchmark ran"))
    with pytest.raises(SystemExit) as exit_info:
        bench.main([name, "--quick", "--out", str(out)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --out ") and len(err.splitlines()) == 1
    assert (
        ("is a file; expected a directory" in err) if where == "under_a_file" else ("is a directory" in err)
    )


def test_out_in_directories_still_to_be_made_is_accepted(tmp_path: Path) -> None:
    common.check_out(tmp_path / "new" / "deeper" / "results.json")
    assert (tmp_path / "new" / "deeper").is_dir() and not any((tmp_path / "new" / "deeper").iterdir())


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc")
def test_out_where_permission_bits_allow_but_writing_fails_is_refused_up_front() -> None:
    """/proc looks writable to root by its permission bits, but no directory or file can be made there:
    checking the bits alone let the benchmark run for minutes and then fail with a traceback."""
    with pytest.raises(
        ConfigError, match=r"^--out /proc/deephash-nope/r\.json: cannot write in /proc/deephash-nope"
    ):
        common.check_out(Path("/proc/deephash-nope/r.json"))
