"""The reproduction's plan: arguments, preflight checks and the Hydra overrides of each job."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from deephash.utils.errors import ConfigError
from experiments import jobs as job_lists
from experiments import preflight as checks
from experiments.plan import build_parser, make_plan
from experiments.preflight import preflight
from tests.conftest import compose_config


def plan_for(*argv: str):
    return make_plan(build_parser().parse_args(list(argv)), argv)


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No network and an empty torch hub cache."""
    monkeypatch.setattr(checks, "has_network", lambda *a, **k: False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))


def test_preflight_accepts_local_data_and_weights(no_network: None, tmp_path: Path) -> None:
    raw = tmp_path / "data" / "mnist" / "MNIST" / "raw"
    batches = tmp_path / "data" / "cifar10" / "cifar-10-batches-py"
    for folder, names in ((raw, checks.MNIST_FILES), (batches, checks.CIFAR10_FILES)):
        folder.mkdir(parents=True)
        for name in names:
            (folder / name).write_bytes(b"x")
    weights = tmp_path / "alexnet.pth"
    weights.write_bytes(b"x")
    plan = plan_for("--data-root", str(tmp_path / "data"), "--weights", str(weights))
    warnings = preflight(plan)
    assert all("GPU" in w for w in warnings)
    # one MNIST file missing is reported, with the weights found
    (raw / checks.MNIST_FILES[0]).unlink()
    with pytest.raises(checks.DataError, match="MNIST not found") as err:
        preflight(plan)
    assert "CIFAR-10" not in str(err.value) and "--weights" not in str(err.value)


def test_preflight_finds_weights_in_the_torch_cache(no_network: None, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    cache = tmp_path / "th" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    plan = plan_for("--datasets", "mnist", "--data-root", str(tmp_path))
    with pytest.raises(checks.DataError, match="ImageNet AlexNet weights not found"):
        preflight(plan)
    (cache / checks.ALEXNET_FILE).write_bytes(b"x")
    with pytest.raises(checks.DataError) as err:
        preflight(plan)
    assert "AlexNet" not in str(err.value) and "CIFAR-10" not in str(err.value)  # cifar10 not selected


def test_smoke_needs_no_data_but_an_existing_yahoo_folder(no_network: None, tmp_path: Path) -> None:
    assert preflight(plan_for("--smoke", "--data-root", str(tmp_path / "none"))) == []
    with pytest.raises(checks.DataError, match="Yahoo folder not found"):
        preflight(plan_for("--smoke", "--yahoo-root", str(tmp_path / "missing")))


def test_file_lists_match_the_datamodules() -> None:
    from deephash.data.cifar10 import FILES
    from deephash.data.mnist import RAW_FILES

    assert checks.MNIST_FILES == RAW_FILES
    assert sorted(checks.CIFAR10_FILES) == sorted(FILES)


def test_network_check_does_not_hang() -> None:
    start = time.perf_counter()
    assert checks.has_network(("127.0.0.1", 9), timeout=1.0) is False  # discard port: refused
    assert time.perf_counter() - start < 3


def test_full_mode_jobs_compose_to_the_paper_configs(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(job_lists, "_cuda", lambda: False)
    weights = tmp_path / "alex net.pth"  # a space: the override must be quoted
    plan = plan_for("--data-root", str(tmp_path / "d"), "--weights", str(weights), "--override", "seed=7")
    jobs = job_lists.training_jobs(plan)
    names = [j.name for j in jobs]
    assert names[:2] == ["mnist/bits48", "mnist/bits128"]  # the paper's runs before the sweep
    sweep = {f"{ds}/bits{b}" for ds in ("mnist", "cifar10") for b in (12, 24, 32, 48, 128)}
    readme_table = {f"cifar10_10k50k/bits{b}" for b in (12, 32, 48)}  # the authors' README mAP@1000
    assert set(names) == sweep | readme_table
    readme = compose_config("train", jobs[names.index("cifar10_10k50k/bits32")].overrides, tmp_path / "r")
    assert readme.data.protocol == "cifar_10k50k" and readme.model.net.bits == 32
    job = jobs[names.index("cifar10/bits24")]
    cfg = compose_config("train", job.overrides, tmp_path / "run")
    assert cfg.model.net.backbone == "alexnet" and cfg.model.net.bits == 24
    assert cfg.model.net.weights == str(weights)
    assert cfg.data.root == str(tmp_path / "d" / "cifar10")
    assert cfg.trainer.max_steps == 50000 and cfg.data.n_queries == 1000
    assert cfg.trainer.accelerator == "cpu"  # no GPU: trainer=cpu
    assert cfg.seed == 7
    (baseline,) = [j for j in job_lists.baseline_jobs(plan) if j.name == "mnist/baselines/itq-pixels"]
    cfg = compose_config("baseline", baseline.overrides, tmp_path / "b")
    assert cfg.method.name == "itq" and cfg.features.name == "pixels" and cfg.bits == 48
    assert cfg.data.root == str(tmp_path / "d" / "mnist")
    # no 48-bit model yet: no F7 baselines
    assert not [j for j in job_lists.baseline_jobs(plan) if j.name.endswith("-f7")]


def test_seeds_count_or_list(tmp_path: Path) -> None:
    assert plan_for("--smoke").seeds is None
    assert plan_for("--smoke", "--n-seeds", "3").seeds == [0, 1, 2]
    assert plan_for("--smoke", "--seeds", "7").seeds == [7]  # a list, however short, is seeds
    assert plan_for("--smoke", "--seeds", "0").seeds == [0]
    assert plan_for("--smoke", "--seeds", "7", "1", "7").seeds == [7, 1]
    with pytest.raises(ConfigError, match="--n-seeds takes a count N >= 1, got 0"):
        plan_for("--smoke", "--n-seeds", "0")
    with pytest.raises(ConfigError, match="--seeds takes seeds >= 0, got 1 -2"):
        plan_for("--smoke", "--seeds", "1", "-2")
    with pytest.raises(ConfigError, match="pass one of them"):
        plan_for("--smoke", "--seeds", "1", "--n-seeds", "2")
    with pytest.raises(ConfigError, match="drop --override seed"):
        plan_for("--smoke", "--n-seeds", "2", "--override", "seed=3")


def test_seeded_jobs_run_every_setting_per_seed(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(job_lists, "_cuda", lambda: False)
    plan = plan_for(
        "--data-root", str(tmp_path), "--n-seeds", "2", "--datasets", "mnist", "--out", str(tmp_path)
    )
    jobs = job_lists.training_jobs(plan)
    assert [j.name for j in jobs][:4] == [
        "mnist/bits48/seed0",
        "mnist/bits48/seed1",
        "mnist/bits128/seed0",
        "mnist/bits128/seed1",
    ]
    # one experiment for the whole code-length sweep, so the comparison keeps it one setting
    assert {o for j in jobs for o in j.overrides if o.startswith("experiment=")} == {
        "experiment=paper_mnist_48"
    }
    job = jobs[3]
    cfg = compose_config("train", job.overrides, tmp_path / "run")
    assert cfg.seed == 1 and cfg.model.net.bits == 128 and cfg.trainer.max_steps == 50000

    # only seed 1's 48-bit model completed: F7 baselines for seed 1, from that model
    model = tmp_path / "runs" / "mnist" / "bits48" / "seed1"
    (model / "checkpoints").mkdir(parents=True)
    (model / "checkpoints" / "best.ckpt").write_bytes(b"x")
    metrics = {
        "status": "completed",
        "modes": {"hamming": {}},
        "best_checkpoint": str(model / "checkpoints" / "best.ckpt"),
    }
    (model / "metrics.json").write_text(json.dumps(metrics))
    baselines = {j.name: j for j in job_lists.baseline_jobs(plan) if j.name.startswith("mnist/baselines/itq")}
    assert sorted(baselines) == [
        "mnist/baselines/itq-f7/seed1",
        "mnist/baselines/itq-pixels/seed0",
        "mnist/baselines/itq-pixels/seed1",
    ]
    f7 = baselines["mnist/baselines/itq-f7/seed1"].overrides
    assert f"ckpt_path={model / 'checkpoints' / 'best.ckpt'}" in f7 and f7[-1] == "seed=1"
    cfg = compose_config("baseline", baselines["mnist/baselines/itq-pixels/seed0"].overrides, tmp_path / "b")
    assert cfg.seed == 0 and cfg.features.name == "pixels"


def test_without_alexnet_weights_mnist_trains_the_small_cnn(
    no_network: None, tmp_path: Path, monkeypatch
) -> None:
    from tests.fixtures_data import write_mnist

    monkeypatch.setattr(job_lists, "_cuda", lambda: False)
    data = tmp_path / "data"
    write_mnist(data / "mnist")
    argv = ("--data-root", str(data), "--out", str(tmp_path / "out"), "--n-seeds", "2")
    plan = plan_for(*argv, "--datasets", "mnist")
    warnings = preflight(plan)
    assert plan.small_cnn == ["mnist"]
    assert warnings == [
        "no ImageNet AlexNet weights: mnist trains experiment=mnist_cnn (small CNN, not the paper's AlexNet)"
    ]
    jobs = job_lists.training_jobs(plan)
    assert {o for j in jobs for o in j.overrides if o.startswith("experiment=")} == {"experiment=mnist_cnn"}
    job = {j.name: j for j in jobs}["mnist/bits48/seed1"]
    cfg = compose_config("train", job.overrides, tmp_path / "run")
    assert cfg.model.net.backbone == "mnistcnn" and cfg.model.net.bits == 48 and cfg.seed == 1
    assert (
        cfg.data.root == str(data / "mnist") and cfg.data.protocol == "paper" and cfg.data.n_queries == 1000
    )
    assert cfg.trainer.accelerator == "cpu"

    # CIFAR-10 as well: it needs AlexNet, so preflight stops and says MNIST alone can run
    with pytest.raises(checks.DataError, match="ImageNet AlexNet weights not found") as err:
        preflight(plan_for(*argv))
    assert "mnist alone runs without them (small CNN, not the paper's AlexNet): --datasets mnist" in str(
        err.value
    )
    # no MNIST files: nothing to run the small CNN on, AlexNet is missing as before
    empty = plan_for("--data-root", str(tmp_path / "none"), "--datasets", "mnist")
    with pytest.raises(checks.DataError, match="MNIST not found.*ImageNet AlexNet weights not found"):
        preflight(empty)
    assert empty.small_cnn == []


def test_with_alexnet_weights_mnist_keeps_the_paper_recipe(
    no_network: None, tmp_path: Path, monkeypatch
) -> None:
    from tests.fixtures_data import write_mnist

    monkeypatch.setattr(job_lists, "_cuda", lambda: False)
    write_mnist(tmp_path / "data" / "mnist")
    weights = tmp_path / "alexnet.pth"
    weights.write_bytes(b"x")
    plan = plan_for("--data-root", str(tmp_path / "data"), "--datasets", "mnist", "--weights", str(weights))
    assert not [w for w in preflight(plan) if "small CNN" in w]
    assert plan.small_cnn == []
    job = job_lists.training_jobs(plan)[0]
    assert job.name == "mnist/bits48" and "experiment=paper_mnist_48" in job.overrides
    cfg = compose_config("train", job.overrides, tmp_path / "run")
    assert cfg.model.net.backbone == "alexnet" and cfg.model.net.weights == str(weights)
    # the same with the weights in the torch hub cache instead of --weights
    cache = tmp_path / "torch-home" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    (cache / checks.ALEXNET_FILE).write_bytes(b"x")
    plan = plan_for("--data-root", str(tmp_path / "data"), "--datasets", "mnist")
    preflight(plan)
    assert plan.small_cnn == [] and "experiment=paper_mnist_48" in job_lists.training_jobs(plan)[0].overrides


def test_cnnh_jobs_compose_to_xia_et_al_protocol(tmp_path: Path, monkeypatch) -> None:
    """The compared methods of figures 4 and 6: the shallow ones at the table's code lengths in --bits, the deep
    ones (ours included) likewise with the MNIST CPU recipe (none for CIFAR-10), 48 bits first, every run under
    data.protocol=cnnh."""
    monkeypatch.setattr(job_lists, "_cuda", lambda: False)
    plan = plan_for("--data-root", str(tmp_path / "d"), "--bits", "12", "48", "128")
    jobs = {job.name: job for job in job_lists.cnnh_jobs(plan)}
    shallow = {"lsh", "sh", "itq", "bre", "mlh", "cca_itq", "ksh", "sdh"}
    expected = {f"{ds}/cnnh/{m}/bits{b}" for ds in ("mnist", "cifar10") for m in shallow for b in (12, 48)}
    expected |= {f"mnist/cnnh/{m}/bits{b}" for m in ("cnnh", "cnnh_plus", "latent") for b in (12, 48)}
    assert set(jobs) == expected
    trained = [name for name, job in jobs.items() if job.entry == "train"]
    assert trained == [f"mnist/cnnh/{m}/bits{b}" for b in (48, 12) for m in ("cnnh", "cnnh_plus", "latent")]
    lsh = compose_config("baseline", jobs["mnist/cnnh/lsh/bits12"].overrides, tmp_path / "l")
    assert (lsh.method.name, lsh.method.centre, lsh.bits, lsh.fit_samples) == ("lsh", False, 12, None)
    assert lsh.data.protocol == "cnnh" and lsh.data.train_per_class == 500 and lsh.data.n_queries == 1000
    assert list(lsh.retrieval.modes) == ["hamming"] and lsh.retrieval.map_at == 5000
    ksh = compose_config("baseline", jobs["cifar10/cnnh/ksh/bits48"].overrides, tmp_path / "k")
    assert ksh.method.name == "ksh" and ksh.data.root == str(tmp_path / "d" / "cifar10")
    deep = compose_config("train", jobs["mnist/cnnh/cnnh_plus/bits48"].overrides, tmp_path / "c")
    assert (
        deep.model.method == "cnnh_plus"
        and deep.model.net.backbone == "mnistcnn"
        and deep.model.net.bits == 48
    )
    assert deep.data.protocol == "cnnh" and deep.data.val_size == 0 and deep.trainer.accelerator == "cpu"
    ours = compose_config("train", jobs["mnist/cnnh/latent/bits12"].overrides, tmp_path / "o")
    assert (ours.model.method, ours.model.net.bits, ours.data.train_per_class) == ("latent", 12, 500)
    assert ours.data.protocol == "cnnh" and ours.trainer.max_epochs == deep.trainer.max_epochs
    only = plan_for(
        "--data-root", str(tmp_path / "d"), "--datasets", "mnist", "--cnnh-methods", "ksh", "cnnh"
    )
    assert sorted(job.name for job in job_lists.cnnh_jobs(only)) == [
        f"mnist/cnnh/{m}/bits{b}"
        for m, b in (("cnnh", 12), ("cnnh", 24), ("cnnh", 32), ("cnnh", 48))
        + (("ksh", 12), ("ksh", 24), ("ksh", 32), ("ksh", 48))
    ]
    assert job_lists.cnnh_jobs(plan_for("--cnnh-methods")) == []


def test_methods_jobs_run_every_method_under_one_protocol(tmp_path: Path, monkeypatch) -> None:
    """The deep methods' comparison: each method at 48 bits with every seed, first, then the other code lengths
    with the first seed; the same recipe, modes and seed for every method; CIFAR-10 has no CPU recipe for it."""
    monkeypatch.setattr(job_lists, "_cuda", lambda: False)
    plan = plan_for("--data-root", str(tmp_path / "d"), "--bits", "12", "32", "48", "128")
    jobs = job_lists.methods_jobs(plan)
    methods = ("latent", "dpsh", "hashnet", "dsh", "greedyhash", "csq")
    order = [(48, 1), (48, 2), (48, 3), (12, 1), (32, 1)]
    assert [job.name for job in jobs] == [
        f"mnist/methods/{m}/bits{b}/seed{s}" for b, s in order for m in methods
    ]
    by_name = {job.name: job for job in jobs}
    configs = {
        m: compose_config("train", by_name[f"mnist/methods/{m}/bits48/seed2"].overrides, tmp_path / m)
        for m in methods
    }
    for method, cfg in configs.items():
        assert cfg.model.method == method and cfg.model.net.bits == 48 and cfg.seed == 2
        assert list(cfg.retrieval.modes) == ["hamming", "hierarchical"] and cfg.model.net.features == "f7"
        assert cfg.trainer.max_epochs == 1 and cfg.trainer.accelerator == "cpu"
        assert cfg.data.root == str(tmp_path / "d" / "mnist") and cfg.data.protocol == "paper"
    shared = (
        "model.net.backbone",
        "data.batch_size",
        "model.optimizer.lr",
        "data.translate",
        "model.net.dropout",
    )
    for key in shared:
        assert len({str(OmegaConf.select(cfg, key)) for cfg in configs.values()}) == 1, key
    seeded = plan_for(
        "--datasets", "mnist", "--bits", "24", "48", "--seeds", "7", "9", "--deep-methods", "csq"
    )
    assert [job.name for job in job_lists.methods_jobs(seeded)] == [
        "mnist/methods/csq/bits48/seed7",
        "mnist/methods/csq/bits48/seed9",
        "mnist/methods/csq/bits24/seed7",
    ]
    assert job_lists.methods_jobs(plan_for("--deep-methods")) == []
    assert job_lists.methods_jobs(plan_for("--datasets", "cifar10")) == []
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--deep-methods", "cnnh"])  # CNNH runs under its own protocol
