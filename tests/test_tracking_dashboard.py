"""deephash-dashboard and the W&B sweep file, offline: every key the dashboard names is one a real sweep logs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

pytest.importorskip("wandb")

from deephash.dashboard import main  # noqa: E402
from deephash.evaluation.metrics import KS  # noqa: E402
from deephash.retrieval.modes import MODES  # noqa: E402
from deephash.tracking import dashboard  # noqa: E402
from deephash.tracking.dashboard import (  # noqa: E402
    build_workspace,
    dashboard_spec,
    spec_keys,
    write_spec,
)
from deephash.utils.errors import ConfigError  # noqa: E402
from tests.conftest import CONF_DIR  # noqa: E402
from tests.test_tracking_wandb import offline, parse_run, run_files  # noqa: E402, F401

REPO = Path(__file__).resolve().parent.parent


def flat(tree: dict[str, Any], sep: str = ".") -> set[str]:
    """Every key path of a nested dict (``model.backbone``, ``val/acc.max``), the inner nodes included;
    logged media and tables (dicts with ``_type``) are leaves."""
    keys = set()
    for key, value in tree.items():
        keys.add(key)
        if isinstance(value, dict) and "_type" not in value:
            keys.update(f"{key}{sep}{sub}" for sub in flat(value, sep))
    return keys


@pytest.mark.slow
def test_every_dashboard_key_is_logged_by_a_real_sweep(
    offline: Path,  # noqa: F811 - the fixture imported above
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    """A two-job digits sweep trained offline, then the dashboard of its folder."""
    command = [
        sys.executable,
        "-m",
        "deephash.train",
        "-m",
        "model.net.dropout=0.1,0.3",
        "model.net.bits=16",
        "trainer.max_epochs=2",
        "+trainer.limit_train_batches=2",
        "+trainer.limit_val_batches=1",
        "+trainer.limit_test_batches=1",
        "callbacks.rich_progress_bar=null",
        "trainer.enable_model_summary=false",
        "trainer.log_every_n_steps=1",
        "hydra.sweep.dir=multirun/dash",
        "tags=[ci]",
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(command, cwd=offline, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    runs = [parse_run(path) for job in (0, 1) for path in run_files(offline / "multirun" / "dash" / str(job))]
    assert len(runs) == 2

    # from another directory, as the sweep's own path: the group the runs logged, not the path's spelling
    monkeypatch.chdir(offline / "multirun")
    assert main(["--sweep-dir", "dash", "--out", "../spec.json"]) == 0
    out, err = capsys.readouterr()
    assert out.strip() == "../spec.json" and "deephash-dashboard --push ../spec.json" in err
    spec = json.loads((offline / "spec.json").read_text())

    # grouping: the dashboard shows exactly the sweep's group, and the swept override is a column
    assert {r["run"].run_group for r in runs} == {spec["group"]} == {"multirun/dash"}
    assert "config:model.net.dropout" in spec["columns"]
    assert all(
        "model.net.dropout=0.1" in r["run"].tags or "model.net.dropout=0.3" in r["run"].tags for r in runs
    )

    logged = {
        "history": set.intersection(*(flat(r["history"], "/") for r in runs)),
        "config": set.intersection(*(flat(r["config"]) for r in runs)),
        "summary": set.intersection(*(flat(r["summary"]) for r in runs)),
    }
    named = spec_keys(spec)
    assert named["history"] >= {
        "bits",
        "epoch",
        "retrieval/hamming/mAP@1000",
        "retrieval/precision_at_k_table",
    }
    for kind in ("history", "config", "summary"):
        assert named[kind] - logged[kind] == set(), kind
    sweep_file = yaml.safe_load((Path(CONF_DIR) / "wandb_sweep" / "bits.yaml").read_text())
    assert sweep_file["metric"]["name"] in logged["history"]

    # the checkpoint and the index, recorded offline for `wandb sync`
    for run in runs:
        assert sorted(a.type for a in run["artifacts"]) == ["index", "model"]
        for artifact in run["artifacts"]:
            assert all(Path(e.local_path).is_file() for e in artifact.manifest.contents)


def test_dashboard_keys_are_logged_by_a_training_run(
    offline: Path,  # noqa: F811 - the fixture imported above
    train_cfg: Any,
) -> None:
    """The fast version of the sweep test above: one tiny digits run trained in this process."""
    from deephash.train import train

    run_dir = offline / "run"
    cfg = train_cfg(
        "logger=wandb",
        "evaluate=true",
        "trainer.max_epochs=2",
        "trainer.log_every_n_steps=1",
        "+trainer.limit_train_batches=2",
        "+trainer.limit_val_batches=1",
        "+trainer.limit_test_batches=1",
        "model.net.bits=16",
        output_dir=run_dir,
    )
    train(cfg)
    (path,) = run_files(run_dir)
    run = parse_run(path)
    logged = {
        "history": flat(run["history"], "/"),
        "config": flat(run["config"]),
        "summary": flat(run["summary"]),
    }
    logged["config"].add("overrides")  # a run launched without overrides has none to show
    named = spec_keys(dashboard_spec(swept=["model.net.dropout"]))
    for kind in ("history", "config", "summary"):
        assert named[kind] - logged[kind] == set(), kind


def test_wandb_sweep_runs_the_hydra_bit_sweep() -> None:
    from hydra import compose, initialize_config_dir
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from wandb.sdk.launch.sweeps.utils import create_sweep_command_args

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(config_name="train", overrides=["hparams_search=bits"], return_hydra_config=True)
    assert str(cfg.hydra.mode) == "RunMode.MULTIRUN"
    params = cfg.hydra.sweeper.params
    hydra_jobs = [
        [f"{key}={value}" for key, value in zip(params, values, strict=True)]
        for values in zip(
            *(
                OverridesParser.create().parse_override(f"{key}={value}").sweep_string_iterator()
                for key, value in params.items()
            ),
            strict=True,
        )
    ]

    sweep = yaml.safe_load((Path(CONF_DIR) / "wandb_sweep" / "bits.yaml").read_text())
    assert sweep["method"] == "grid" and list(sweep["parameters"]) == list(params)
    wandb_jobs = []
    for bits in sweep["parameters"]["model.net.bits"]["values"]:
        args = create_sweep_command_args({"args": {"model.net.bits": {"value": bits}}})
        macros = {"${env}": [], "${interpreter}": ["python"], "${args_no_hyphens}": args["args_no_hyphens"]}
        argv = [part for chunk in sweep["command"] for part in macros.get(chunk, [chunk])]
        assert argv[:3] == ["python", "-m", "deephash.train"]  # the program of conf/train.yaml
        wandb_jobs.append(argv[3:])
    assert wandb_jobs == hydra_jobs
    assert [int(job[0].split("=")[1]) for job in hydra_jobs] == [12, 24, 32, 48, 64, 128]
    assert (REPO / sweep["program"]).is_file() and sweep["program"] == "deephash/train.py"


def test_defaults_follow_the_retrieval_config() -> None:
    retrieval = yaml.safe_load((Path(CONF_DIR) / "retrieval" / "default.yaml").read_text())
    assert list(MODES) == retrieval["modes"] and list(KS) == retrieval["ks"]


def test_spec_panels() -> None:
    spec = dashboard_spec(
        group="multirun/x", modes=["hamming", "euclidean"], ks=[5, 50], swept=["model.net.dropout"]
    )
    assert [s["name"] for s in spec["sections"]] == [
        "Retrieval vs bits",
        "Precision at k",
        "Training",
        "Runs",
    ]
    named = spec_keys(spec)
    assert {
        "retrieval/hamming/mAP",
        "retrieval/euclidean/mAP@1000",
        "retrieval/euclidean/precision@50",
    } <= set(named["history"])
    assert not [k for k in named["history"] if "hierarchical" in k or "hamming_radius" in k]
    assert {k for k in named["history"] if "precision@" in k} == {
        f"retrieval/{mode}/precision@{k}" for mode in ("hamming", "euclidean") for k in (5, 50)
    }
    retrieval = spec["sections"][0]["panels"]
    assert {(p["x"], p["groupby"]) for p in retrieval} == {("bits", "method")}  # a line per method
    assert "config:model.net.dropout" in spec["columns"] and "summary:val/acc.max" in spec["columns"]
    assert spec_keys(dashboard_spec(modes=["hamming_radius"]))["history"] >= {
        "retrieval/hamming_radius/precision",
        "retrieval/hamming_radius/recall",
    }
    with pytest.raises(ConfigError, match="unknown retrieval modes \\['flat'\\]"):
        dashboard_spec(modes=["flat"])


def test_workspace_from_spec() -> None:
    pytest.importorskip("wandb_workspaces")
    spec = dashboard_spec(group="multirun/x")
    workspace = build_workspace(spec, entity="me")
    assert (workspace.entity, workspace.project) == ("me", "deephash")
    assert [len(s.panels) for s in workspace.sections] == [len(s["panels"]) for s in spec["sections"]]
    view = workspace._to_model()  # the request body W&B would receive, built without a connection
    body = json.dumps(view.model_dump(by_alias=True, exclude_none=True))
    for key in spec_keys(spec)["history"]:
        assert json.dumps(key) in body, key
    line = workspace.sections[0].panels[0]
    assert (line.x, line.y, line.groupby) == (
        "bits",
        ["retrieval/hamming/mAP", "retrieval/hamming/mAP@1000"],
        "method",
    )
    assert "multirun/x" in str(workspace.runset_settings.filters)
    with pytest.raises(ConfigError, match="no W&B entity"):
        build_workspace(spec)


def test_online_saves_the_workspace_and_prints_its_url(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, tmp_path: Path
) -> None:
    ws = pytest.importorskip("wandb_workspaces.workspaces")
    saved = []
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setattr(ws.Workspace, "save", lambda self: saved.append(self) or self)
    monkeypatch.setattr(
        ws.Workspace, "url", property(lambda self: f"https://wandb.ai/{self.entity}/{self.project}")
    )
    monkeypatch.setattr(dashboard, "_default_entity", lambda: "me")
    assert main(["--mode", "online", "--group", "g1", "--project", "p"]) == 0
    assert capsys.readouterr().out.strip() == "https://wandb.ai/me/p"
    assert saved[0].name == "deephash: g1" and "g1" in str(saved[0].runset_settings.filters)

    # a spec written offline is pushed as it was
    path = write_spec(dashboard_spec(project="q", group="g2", entity="team"), tmp_path / "spec.json")
    assert main(["--mode", "online", "--push", str(path)]) == 0
    assert capsys.readouterr().out.strip() == "https://wandb.ai/team/q"
    assert "g2" in str(saved[1].runset_settings.filters)


def test_without_wandb_workspaces(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "wandb_workspaces", None)
    with pytest.raises(ConfigError, match=r"needs wandb-workspaces: pip install 'deephash\[dashboard\]'"):
        build_workspace(dashboard_spec(), entity="me")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--push", "missing.json"], "dashboard spec missing.json not found"),
        (["--push", "bad.json"], "bad.json is not a deephash dashboard spec"),
        (["--mode", "offline", "--push", "spec.json"], "pushing a dashboard needs W&B online"),
        (["--sweep-dir", "nowhere"], "multirun directory nowhere does not exist"),
        (["--modes", "hamming", "exact"], "unknown retrieval modes ['exact']"),
        (["--ks", "0"], "expected an integer >= 1, got 0"),
        (["--group", "g", "--sweep-dir", "d"], "not allowed with argument"),
    ],
)
def test_bad_input(
    argv: list[str],
    message: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_MODE", "offline")
    (tmp_path / "bad.json").write_text(json.dumps({"version": 99}))
    write_spec(dashboard_spec(), tmp_path / "spec.json")
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]  # argparse's own errors follow its usage
    assert message in last and last.startswith(("error: ", "deephash-dashboard: error: "))


def _job(path: Path, group: str | None, launched: Path) -> None:
    """A finished job folder as a run leaves it: metrics.json (with the W&B group it logged, if any) and
    Hydra's record of the directory it was launched from."""
    (path / ".hydra").mkdir(parents=True)
    metrics = {"status": "completed", **({"wandb_group": group} if group else {})}
    (path / "metrics.json").write_text(json.dumps(metrics))
    (path / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump([f"seed={path.name}"]))
    hydra = {"hydra": {"runtime": {"cwd": str(launched), "output_dir": str(path)}}}
    (path / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump(hydra))


def test_the_dashboard_group_is_the_one_the_runs_logged_from_any_directory(tmp_path, monkeypatch) -> None:
    sweep = tmp_path / "probe" / "sweep1"
    for job in ("0", "1"):
        _job(sweep / job, "sweep1", launched=tmp_path / "probe")
    monkeypatch.chdir(tmp_path)
    assert dashboard.sweep_settings("probe/sweep1")[0] == "sweep1"  # not probe/sweep1
    single = tmp_path / "run1"
    (single / ".hydra").mkdir(parents=True)
    (single / "metrics.json").write_text(json.dumps({"status": "completed", "wandb_group": "digits-demo"}))
    assert dashboard.sweep_settings("run1")[0] == "digits-demo"  # not run1


def test_runs_that_recorded_no_group_fall_back_to_their_launch_directory(
    tmp_path, monkeypatch, caplog
) -> None:
    sweep = tmp_path / "probe" / "sweep2"
    for job in ("0", "1"):
        _job(sweep / job, None, launched=tmp_path / "probe")
    monkeypatch.chdir(tmp_path)
    assert dashboard.sweep_settings("probe/sweep2")[0] == "sweep2"
    assert "records its W&B group; assuming sweep2" in caplog.text
    _job(sweep / "2", "elsewhere", launched=tmp_path)
    _job(sweep / "3", "other", launched=tmp_path)
    with pytest.raises(ConfigError, match="logged to 2 W&B groups \\(elsewhere, other\\); pass --group G"):
        dashboard.sweep_settings("probe/sweep2")
