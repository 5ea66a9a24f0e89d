"""Launching the reproduction's jobs: completed runs skipped, interrupted ones resumed, failures recorded."""

from __future__ import annotations

import json
from pathlib import Path

from experiments import launch
from experiments.paper import planned_reason
from experiments.plan import Job, build_parser, make_plan


def plan_for(*argv: str):
    return make_plan(build_parser().parse_args(list(argv)), argv)


def test_run_job_skips_completed_and_resumes_interrupted_runs(tmp_path: Path, monkeypatch) -> None:
    calls: list[list[str]] = []

    def fake_run(entry: str, overrides: list[str], run_dir: Path) -> None:
        calls.append(overrides)
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "metrics.json").write_text(json.dumps({"status": "completed", "modes": {"hamming": {}}}))

    monkeypatch.setattr(launch, "_run_inprocess", fake_run)
    plan = plan_for("--smoke", "--out", str(tmp_path))
    job = Job("digits/bits48", "train", ["experiment=demo"])
    run_dir = tmp_path / "runs" / "digits" / "bits48"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "checkpoints" / "last.ckpt").write_bytes(b"x")
    # killed while evaluating: says completed but was never evaluated
    (run_dir / "metrics.json").write_text(json.dumps({"status": "completed"}))
    assert launch.run_job(plan, job)["status"] == "completed"
    assert calls[-1][-1] == f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}"
    assert launch.run_job(plan, job) == {"status": "completed", "skipped": True}
    assert len(calls) == 1
    status = json.loads((tmp_path / "status.json").read_text())
    assert status["digits/bits48"]["skipped"] is True


def test_a_failed_run_is_recorded_and_the_rest_goes_on(tmp_path: Path, monkeypatch) -> None:
    def failing(entry: str, overrides: list[str], run_dir: Path) -> None:
        raise RuntimeError("CUDA out of memory")

    monkeypatch.setattr(launch, "_run_inprocess", failing)
    plan = plan_for("--smoke", "--out", str(tmp_path))
    entry = launch.run_job(plan, Job("digits/bits12", "train", []))
    assert entry["status"] == "failed" and "CUDA out of memory" in entry["error"]
    assert planned_reason(plan, "digits/bits12") == "failed: RuntimeError: CUDA out of memory"


def test_ctrl_c_during_the_reproduction_says_what_finished_and_how_to_go_on(
    tmp_path: Path, monkeypatch, capsys
) -> None:
    """Not a KeyboardInterrupt traceback out of the run under way: status 130, the runs that finished, and
    that the same command resumes."""
    from experiments import reproduce

    def interrupted_training(plan):
        launch.record_status(plan, "digits/bits12", {"status": "completed"})
        launch.record_status(plan, "digits/bits48", {"status": "failed"})
        raise KeyboardInterrupt

    monkeypatch.setattr(launch, "run_training", interrupted_training)
    monkeypatch.setattr(reproduce, "preflight", lambda plan: [])
    assert reproduce.main(["--smoke", "--out", str(tmp_path)]) == 130
    err = capsys.readouterr().err
    assert err.strip() == (
        "interrupted: 1 runs finished (digits/bits12); running the same command again resumes (completed runs "
        "are skipped, an interrupted training continues from its checkpoints/last.ckpt)"
    )
