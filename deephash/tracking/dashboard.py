"""The W&B dashboard of a project or a sweep, built from code rather than by clicking.

``dashboard_spec`` describes it as plain data (JSON-ready): sections of panels, the runs table's columns,
the run filter (a group) and grouping. ``build_workspace`` turns a spec into a ``wandb-workspaces`` workspace
(the optional ``[dashboard]`` extra) and ``save_workspace`` saves it to W&B. Offline, the spec is written
to a file (``write_spec``) and pushed later from that file.

Every key a spec names is one the runs log (``deephash.tracking.wandb``): history keys for the panels' axes,
tables and images, config keys for grouping and config columns, summary keys for summary columns.
``spec_keys`` lists them by kind, so they can be checked against a real run.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from deephash.evaluation.metrics import KS
from deephash.retrieval.modes import MODES
from deephash.tracking.sweep import BITS_KEYS, SEED_KEYS, load_jobs, swept_keys
from deephash.tracking.wandb import sweep_name
from deephash.utils.errors import ConfigError
from deephash.utils.io import atomic_write_json
from deephash.utils.logging import get_logger

log = get_logger(__name__)

SPEC_VERSION = 1
RADIUS_MODE = "hamming_radius"  # no ranking: precision and recall of the ball instead of mAP
METHOD = "method"  # the config key the retrieval panels draw one line for each value of, and runs group by
# run info every run's config has (deephash.tracking.wandb.build_wandb_logger), train and baseline runs alike
INFO_COLUMNS = (
    "config:method",
    "config:dataset",
    "config:backbone",
    "config:bits",
    "config:seed",
    "config:overrides",
)
PRECISION_CHART = "wandb/lineseries/v0"  # the chart wandb.plot.line_series logs with its table
INSTALL_HINT = "pip install 'deephash[dashboard]' (or pip install wandb-workspaces)"


def dashboard_spec(
    project: str = "deephash",
    entity: str | None = None,
    group: str | None = None,
    name: str | None = None,
    modes: Sequence[str] = MODES,
    ks: Sequence[int] = KS,
    swept: Sequence[str] = (),
) -> dict[str, Any]:
    """The dashboard as plain data: retrieval against bits (per mode, a line per method), precision@k,
    training curves and a runs table with the swept overrides (``swept``: config keys such as
    ``model.optimizer.lr``; every run also has all its overrides in one ``overrides`` column).

    ``group``: only that group's runs (one sweep); ``None``: the whole project.
    """
    unknown = [m for m in modes if m not in MODES]
    if unknown or not modes:
        raise ConfigError(
            f"unknown retrieval modes {unknown or list(modes)}: expected some of {', '.join(MODES)}"
        )
    ranked = [m for m in modes if m != RADIUS_MODE]
    retrieval = [
        line(
            f"{mode}: mAP and mAP@1000 vs bits",
            "bits",
            [f"retrieval/{mode}/mAP", f"retrieval/{mode}/mAP@1000"],
        )
        for mode in ranked
    ]
    if RADIUS_MODE in modes:
        keys = [f"retrieval/{RADIUS_MODE}/{m}" for m in ("precision", "recall")]
        retrieval.append(line("hamming radius: precision and recall vs bits", "bits", keys))
    precision = [
        line(f"{mode}: precision@k vs bits", "bits", [f"retrieval/{mode}/precision@{k}" for k in ks])
        for mode in ranked
    ]
    precision += [
        {
            "type": "table_chart",
            "title": "precision vs number of retrieved images (one line per mode)",
            "table": "retrieval/precision_at_k_table",
            "chart": PRECISION_CHART,
            "fields": {"step": "step", "lineKey": "lineKey", "lineVal": "lineVal"},
            "strings": {"title": "Precision vs k", "xname": "k"},
        },
        {"type": "media", "title": "precision@k figure", "keys": ["retrieval/precision_at_k_plot"]},
    ]
    training = [
        line("accuracy", "epoch", ["val/acc", "train/acc"], None),
        line("validation loss", "epoch", ["val/loss"], None),
        line("training loss", "trainer/global_step", ["train/loss"], None),
        line("code bits on validation", "epoch", ["val/bits/fire_rate_mean", "val/bits/binariness"], None),
    ]
    columns = [
        *INFO_COLUMNS,
        *(f"config:{key}" for key in swept if key not in BITS_KEYS | SEED_KEYS),
        "summary:val/acc.max",
        "summary:test/acc",
        *(f"summary:retrieval/{mode}/mAP" for mode in ranked),
    ]
    return {
        "version": SPEC_VERSION,
        "entity": entity,
        "project": project,
        "name": name or f"deephash: {group or project}",
        "group": group,
        "groupby": [METHOD],
        "columns": list(dict.fromkeys(columns)),
        "x_axis": "epoch",
        "sections": [
            {"name": "Retrieval vs bits", "panels": retrieval},
            {"name": "Precision at k", "panels": precision},
            {"name": "Training", "panels": training},
            {"name": "Runs", "panels": [{"type": "run_comparer", "title": "what differs between runs"}]},
        ],
    }


def line(title: str, x: str, y: Sequence[str], groupby: str | None = METHOD) -> dict[str, Any]:
    """A line plot of history keys ``y`` against ``x``; with ``groupby``, one line per value of that config key
    (runs averaged), so a sweep's runs, one point each, join into a line against bits."""
    return {"type": "line", "title": title, "x": x, "y": list(y), "groupby": groupby}


def sweep_settings(sweep_dir: str | os.PathLike) -> tuple[str, list[str]]:
    """A local sweep folder's (or run folder's) W&B group, :func:`logged_group`, and its swept override keys
    that are plain config values (``model.optimizer.lr``; a config group choice such as ``data=mnist`` shows
    in the overrides column only)."""
    jobs = load_jobs(sweep_dir)
    configs = [_job_config(job.path) for job in jobs]
    swept = [key for key in swept_keys(jobs) if any(_is_value(cfg, key) for cfg in configs)]
    return logged_group(sweep_dir, jobs), swept


def logged_group(sweep_dir: str | os.PathLike, jobs: Sequence[Any]) -> str:
    """The W&B group the runs of a folder logged under: the one their metrics.json records (``wandb_group``),
    whichever directory this command runs from; a ConfigError if they name several. Runs that recorded none
    (W&B off, or killed before they wrote it) fall back to the sweep directory named from the directory the
    sweep was launched from (its jobs' ``.hydra/hydra.yaml``), as the runs name their group, with a warning."""
    groups = sorted({str(job.metrics["wandb_group"]) for job in jobs if job.metrics.get("wandb_group")})
    if len(groups) > 1:
        raise ConfigError(
            f"the runs in {sweep_dir} logged to {len(groups)} W&B groups ({', '.join(groups)}); pass --group G"
        )
    if groups:
        return groups[0]
    launched = _launch_dir(jobs[0].path) if jobs else None
    group = sweep_name(sweep_dir, cwd=launched)
    log.warning(
        "no run in %s records its W&B group; assuming %s (pass --group if its runs show elsewhere)",
        sweep_dir,
        group,
    )
    return group


def _launch_dir(job_path: Path) -> str | None:
    """The directory a Hydra job was launched from (``hydra.runtime.cwd``), or None."""
    import yaml

    try:
        hydra_cfg = yaml.safe_load((job_path / ".hydra" / "hydra.yaml").read_text())
        return str(hydra_cfg["hydra"]["runtime"]["cwd"])
    except (OSError, yaml.YAMLError, KeyError, TypeError):
        return None


def spec_keys(spec: Mapping[str, Any]) -> dict[str, set[str]]:
    """The keys a spec names, by where the runs must have them: ``history``, ``config`` and ``summary``
    (summary columns name a define_metric summary as ``<key>.<max|min>``)."""
    keys: dict[str, set[str]] = {"history": set(), "config": set(spec.get("groupby") or ()), "summary": set()}
    for column in spec.get("columns") or ():
        kind, _, key = column.partition(":")
        keys["config" if kind == "config" else "summary"].add(key)
    for panel in _panels(spec):
        if panel["type"] == "line":
            keys["history"].update([panel["x"], *panel["y"]])
            if panel.get("groupby"):
                keys["config"].add(panel["groupby"])
        elif panel["type"] == "table_chart":
            keys["history"].add(panel["table"])
        elif panel["type"] == "media":
            keys["history"].update(panel["keys"])
    return keys


def write_spec(spec: Mapping[str, Any], path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, dict(spec))
    return path


def read_spec(path: str | os.PathLike) -> dict[str, Any]:
    """A spec written by :func:`write_spec`; a one-line error when the file is missing or not one."""
    path = Path(path)
    try:
        spec = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(
            f"dashboard spec {path} not found: expected a file written by deephash-dashboard"
        ) from None
    except (OSError, ValueError) as err:
        raise ConfigError(f"dashboard spec {path} is not readable JSON: {err}") from None
    if not isinstance(spec, dict) or spec.get("version") != SPEC_VERSION or "sections" not in spec:
        raise ConfigError(f"{path} is not a deephash dashboard spec (version {SPEC_VERSION} with sections)")
    return spec


def build_workspace(spec: Mapping[str, Any], entity: str | None = None) -> Any:
    """The spec as a ``wandb_workspaces.workspaces.Workspace`` (not saved). ``entity`` fills a spec without one."""
    try:
        import wandb_workspaces.reports.v2 as wr
        import wandb_workspaces.workspaces as ws
        from wandb_workspaces import expr
    except ImportError:
        raise ConfigError(f"building a W&B workspace needs wandb-workspaces: {INSTALL_HINT}") from None
    entity = spec.get("entity") or entity
    if not entity:
        raise ConfigError("no W&B entity: pass --entity (your user or team name)")
    sections = [
        ws.Section(name=section["name"], is_open=True, panels=[_panel(wr, p) for p in section["panels"]])
        for section in spec["sections"]
    ]
    filters = [expr.Metric("Group") == spec["group"]] if spec.get("group") else []
    return ws.Workspace(
        entity=entity,
        project=spec["project"],
        name=spec["name"],
        sections=sections,
        settings=ws.WorkspaceSettings(x_axis=spec.get("x_axis") or "Step"),
        runset_settings=ws.RunsetSettings(
            filters=filters,
            groupby=[expr.Config(key) for key in spec.get("groupby") or ()],
            pinned_columns=list(spec.get("columns") or ()),
        ),
    )


def save_workspace(spec: Mapping[str, Any], entity: str | None = None) -> str:
    """Save the spec's workspace to W&B (needs credentials); returns its URL."""
    workspace = build_workspace(spec, entity or _default_entity())
    workspace.save()
    return str(workspace.url)


def _default_entity() -> str | None:
    import wandb

    return wandb.Api().default_entity


def _panel(wr: Any, panel: Mapping[str, Any]) -> Any:
    kind = panel["type"]
    if kind == "line":
        groupby = {"groupby": panel["groupby"], "aggregate": True} if panel.get("groupby") else {}
        return wr.LinePlot(title=panel["title"], x=panel["x"], y=list(panel["y"]), **groupby)
    if kind == "table_chart":
        chart = wr.CustomChart.from_table(panel["table"], dict(panel["fields"]), dict(panel["strings"]))
        chart.chart_name = panel["chart"]
        return chart
    if kind == "media":
        return wr.MediaBrowser(title=panel["title"], media_keys=list(panel["keys"]))
    if kind == "run_comparer":
        return wr.RunComparer(diff_only="split")
    raise ConfigError(f"unknown panel type {kind!r} in the dashboard spec")


def _job_config(path: Path) -> Any:
    from omegaconf import OmegaConf

    for name in ("config.yaml", ".hydra/config.yaml"):
        if (path / name).is_file():
            try:
                return OmegaConf.load(path / name)
            except Exception:  # noqa: BLE001 - an unreadable config just names no columns
                return None
    return None


def _is_value(cfg: Any, key: str) -> bool:
    from omegaconf import OmegaConf

    if cfg is None:
        return False
    value = OmegaConf.select(cfg, key, default=None, throw_on_resolution_failure=False)
    return value is not None and not OmegaConf.is_config(value)


def _panels(spec: Mapping[str, Any]) -> Iterable[Mapping[str, Any]]:
    for section in spec.get("sections") or ():
        yield from section.get("panels") or ()
