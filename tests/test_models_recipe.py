"""The authors' training recipe in the composed configs: schedules, Caffe initialisation, CaffeNet dropout
placement, float32 codes under bf16 autocast, and SSDH's normalisation of the optional terms."""

from __future__ import annotations

import math
from pathlib import Path

import hydra
import pytest
import pytorch_lightning as pl
import torch
from omegaconf import OmegaConf
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from deephash.methods.latent import balanced_bits_loss, forcing_binary_loss
from deephash.models.backbones import build_backbone
from deephash.models.net import HashNetwork
from deephash.utils.errors import ConfigError
from tests.conftest import CONF_DIR, compose_config
from tests.fixtures_models import latent_module, latent_net

PAPER_EXPERIMENTS = sorted(p.stem for p in Path(CONF_DIR, "experiment").glob("paper_*.yaml"))


def _compose(tmp_path: Path, *overrides: str):
    return compose_config("train", ["logger=none", "callbacks=none", *overrides], tmp_path / "run")


# ------------------------------------------------------------------------------------------- schedules


def test_every_paper_experiment_is_listed() -> None:
    assert {"paper_mnist_48", "paper_cifar10_48", "paper_yahoo", "paper_cifar10_10k50k_48"} <= set(
        PAPER_EXPERIMENTS
    )


@pytest.mark.parametrize("experiment", PAPER_EXPERIMENTS)
def test_paper_schedule_drops_once_at_half_the_iterations(experiment: str, tmp_path: Path) -> None:
    """One x0.1 drop at max_steps / 2 (the authors' CIFAR-10 solver: 25k of 50k), per iteration."""
    cfg = _compose(tmp_path, f"experiment={experiment}")
    max_steps = cfg.trainer.max_steps
    assert cfg.model.scheduler_interval == "step"
    assert cfg.model.scheduler.step_size * 2 == max_steps
    base = cfg.model.optimizer.lr
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=base)
    scheduler = hydra.utils.instantiate(cfg.model.scheduler)(optimizer=optimizer)
    assert isinstance(scheduler, torch.optim.lr_scheduler.StepLR)

    def lr_at(iteration: int) -> float:  # the rate the optimizer uses at 0-based iteration ``iteration``
        scheduler.last_epoch = iteration
        return scheduler._get_closed_form_lr()[0]

    assert lr_at(0) == pytest.approx(base)
    assert lr_at(max_steps // 2 - 1) == pytest.approx(base)
    assert lr_at(max_steps // 2) == pytest.approx(base * 0.1)
    assert lr_at(max_steps - 1) == pytest.approx(base * 0.1)


def test_yahoo_schedule_is_the_cifar_shape_scaled(tmp_path: Path) -> None:
    cfg = _compose(tmp_path, "experiment=paper_yahoo")
    assert cfg.trainer.max_steps == 750_000
    assert cfg.model.scheduler.step_size == 375_000
    assert cfg.model.scheduler.gamma == pytest.approx(0.1)
    # the final rate: one drop, not 0.1 ** 29 (~1e-32) as with the inherited 25k step
    final = cfg.model.optimizer.lr * cfg.model.scheduler.gamma ** (
        (750_000 - 1) // cfg.model.scheduler.step_size
    )
    assert final == pytest.approx(1e-4)


# ---------------------------------------------------------------------------------- training protocol


@pytest.mark.parametrize("experiment", PAPER_EXPERIMENTS)
def test_paper_experiments_train_on_everything_and_evaluate_the_last_iteration(
    experiment: str, tmp_path: Path
) -> None:
    """The authors trained on every training image and evaluated the final iteration."""
    cfg = _compose(tmp_path, f"experiment={experiment}")
    assert cfg.data.val_size == 0
    assert cfg.checkpoint_selection == "last"
    # without validation nothing is monitored; periodic saves keep a long run resumable
    full = compose_config("train", ["logger=none", f"experiment={experiment}"], tmp_path / "full")
    assert full.callbacks.model_checkpoint.monitor is None
    assert full.callbacks.model_checkpoint.every_n_train_steps > 0
    assert full.trainer.max_steps % full.callbacks.model_checkpoint.every_n_train_steps == 0
    # last.ckpt comes with each periodic save (unmonitored, so every save is one), not from a second writer
    assert full.callbacks.model_checkpoint.save_last is True and full.callbacks.last_checkpoint is None


@pytest.mark.parametrize("bits", [12, 32, 48])
def test_cifar10_10k50k_experiments_match_the_authors_readme_table(bits: int, tmp_path: Path) -> None:
    """mAP@1000, all 10,000 test images against the 50,000 training images, the CIFAR-10 recipe."""
    cfg = _compose(tmp_path, f"experiment=paper_cifar10_10k50k_{bits}")
    assert cfg.model.net.bits == bits and cfg.data._target_.endswith("CIFAR10DataModule")
    assert cfg.data.protocol == "cifar_10k50k" and cfg.retrieval.map_at == 1000
    paper = _compose(tmp_path, "experiment=paper_cifar10_48")
    for key in (
        "model.backbone",
        "model.optimizer",
        "model.scheduler",
        "data.batch_size",
        "trainer.max_steps",
    ):
        assert OmegaConf.select(cfg, key) == OmegaConf.select(paper, key), key


@pytest.mark.parametrize("overrides", [[], ["experiment=demo"], ["data=cifar10", "model=alexnet"]])
def test_other_configs_select_on_validation(overrides: list[str], tmp_path: Path) -> None:
    cfg = _compose(tmp_path, *overrides)
    assert cfg.checkpoint_selection == "best_val"
    assert cfg.data.val_size > 0


# -------------------------------------------------------------------------------------- initialisation


@pytest.mark.parametrize("experiment", PAPER_EXPERIMENTS)
def test_paper_experiments_use_the_authors_init_and_dropout(experiment: str, tmp_path: Path) -> None:
    cfg = _compose(tmp_path, f"experiment={experiment}")
    assert cfg.model.net.head.init == "caffe"
    assert cfg.model.net.backbone_dropout == "caffenet"


@pytest.mark.parametrize("overrides", [[], ["experiment=demo"], ["model=alexnet"], ["model=resnet50"]])
def test_other_configs_keep_torch_defaults(overrides: list[str], tmp_path: Path) -> None:
    cfg = _compose(tmp_path, *overrides)
    assert cfg.model.net.head.init == "torch"
    assert cfg.model.net.backbone_dropout == "torchvision"


def _assert_caffe_statistics(net: HashNetwork) -> None:
    h, f8 = net.head.latent, net.head.classifier
    # H: N(0, 0.005), bias exactly 1 (every unit starts near sigmoid(1) = 0.73)
    assert h.weight.std().item() == pytest.approx(0.005, rel=0.05)
    assert abs(h.weight.mean().item()) < 4 * 0.005 / math.sqrt(h.weight.numel())
    assert torch.equal(h.bias, torch.ones_like(h.bias))
    # F8: N(0, 0.01), bias exactly 0
    assert f8.weight.std().item() == pytest.approx(0.01, rel=0.2)
    assert abs(f8.weight.mean().item()) < 4 * 0.01 / math.sqrt(f8.weight.numel())
    assert torch.equal(f8.bias, torch.zeros_like(f8.bias))
    with torch.no_grad():
        start = torch.sigmoid(h(torch.zeros(1, h.in_features)))
    assert torch.allclose(start, torch.full_like(start, 1 / (1 + math.exp(-1))))


def test_composed_paper_model_has_caffe_statistics_on_h_and_f8_only(tmp_path: Path) -> None:
    """The composed paper model: H and F8 follow the prototxt fillers, the backbone (F7) is untouched."""
    cfg = _compose(tmp_path, "experiment=paper_cifar10_48", "model.net.weights=null")
    data = {"num_classes": 10, "in_channels": 3}
    torch.manual_seed(0)
    caffe = hydra.utils.instantiate(cfg.model, net=data).net
    torch.manual_seed(0)
    default = hydra.utils.instantiate(cfg.model, net={**data, "head": {"init": "torch"}}).net
    _assert_caffe_statistics(caffe)
    for (name, a), b in zip(caffe.backbone.state_dict().items(), default.backbone.state_dict().values()):
        assert torch.equal(a, b), f"caffe init changed the backbone's {name}"
    # PyTorch's default is uniform(+-1/sqrt(fan_in)): another spread and a random bias
    assert not torch.equal(default.head.latent.bias, caffe.head.latent.bias)
    assert default.head.latent.weight.std().item() == pytest.approx(1 / math.sqrt(3 * 4096), rel=0.05)
    assert default.head.classifier.weight.std().item() == pytest.approx(1 / math.sqrt(3 * 48), rel=0.2)


def test_caffe_init_on_small_cnn() -> None:
    torch.manual_seed(1)
    net = latent_net("smallcnn", bits=64, num_classes=10, in_channels=1, f7_dim=512, init="caffe")
    _assert_caffe_statistics(net)


def test_unknown_init_is_rejected() -> None:
    with pytest.raises(ConfigError, match="model.net.head.init must be one of torch, caffe, got 'xavier'"):
        latent_net("smallcnn", bits=8, num_classes=3, in_channels=1, init="xavier")


# ------------------------------------------------------------------------------------ dropout placement


def _fc6_input(features: nn.Module, x: torch.Tensor, fc6: nn.Linear) -> torch.Tensor:
    seen = []
    handle = fc6.register_forward_hook(lambda module, inputs, output: seen.append(inputs[0]))
    features(x)
    handle.remove()
    return seen[0]


def test_caffenet_dropout_placement_keeps_pool5_intact_in_training() -> None:
    """torchvision's AlexNet drops pool5 units before fc6; CaffeNet does not (drop6/drop7 only)."""
    torch.manual_seed(0)
    tv = build_backbone("alexnet", None).features.train()
    caffe = build_backbone("alexnet", None, dropout_layout="caffenet").features.train()
    assert [type(m).__name__ for m in tv.head] == ["Dropout", "Linear", "ReLU", "Dropout", "Linear", "ReLU"]
    assert [type(m).__name__ for m in caffe.head] == [
        "Identity",
        "Linear",
        "ReLU",
        "Dropout",
        "Linear",
        "ReLU",
    ]
    assert list(tv.state_dict()) == list(caffe.state_dict())  # checkpoints keep their keys
    x = torch.randn(2, 3, 227, 227)
    with torch.no_grad():
        pool5 = torch.flatten(caffe.avgpool(caffe.trunk(x)), 1)
        assert torch.equal(_fc6_input(caffe, x, caffe.head[1]), pool5)
        pool5_tv = torch.flatten(tv.avgpool(tv.trunk(x)), 1)
        assert not torch.equal(_fc6_input(tv, x, tv.head[1]), pool5_tv)


def test_caffenet_dropout_placement_on_small_cnn_and_vgg16() -> None:
    small = build_backbone("smallcnn", None, in_channels=1, dropout_layout="caffenet").features
    assert isinstance(small.fc[0], nn.Identity) and isinstance(small.fc[3], nn.Dropout)
    vgg = build_backbone("vgg16", None, dropout_layout="caffenet").features  # already CaffeNet's placement
    assert [type(m).__name__ for m in vgg.head] == ["Linear", "ReLU", "Dropout", "Linear", "ReLU"]


def test_unknown_dropout_layout_is_rejected() -> None:
    with pytest.raises(
        ConfigError, match="model.net.backbone_dropout must be one of torchvision, caffenet, got 'none'"
    ):
        latent_module("smallcnn", bits=8, num_classes=3, in_channels=1, backbone_dropout="none")


# ------------------------------------------------------------------------------------------- precision


def _codes(latent: torch.Tensor) -> torch.Tensor:
    return latent >= 0.5  # the latent method's rule (paper eq. 1)


def _make_undecided(net: HashNetwork) -> torch.Tensor:
    """Make ``net``'s backbone pass F7 through and set H so that its activations on the returned F7
    (256, 256) cluster within ~0.01 of 0.5, where bf16's spacing (2^-9 below 0.5) rounds some to 0.5."""
    torch.manual_seed(0)
    net.backbone = nn.Identity()
    f7 = torch.rand(256, 256)
    with torch.no_grad():
        net.head.latent.weight.normal_(0, 0.01)
        net.head.latent.bias.copy_(-(f7 @ net.head.latent.weight.T).mean(0))
    return f7


def _undecided_net(device: str) -> tuple[HashNetwork, torch.Tensor]:
    net = latent_net("smallcnn", bits=48, num_classes=4, in_channels=1, f7_dim=256).eval()
    f7 = _make_undecided(net)
    return net.to(device), f7.to(device)


DEVICES = [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU")),
]


@pytest.mark.parametrize("device", DEVICES)
def test_bf16_autocast_codes_equal_float32_codes(device: str) -> None:
    net, f7 = _undecided_net(device)
    with torch.no_grad():
        reference = net(f7).latent
        # the case is hard: bf16 rounding of these activations would flip bits
        rounded = torch.sigmoid(net.head.latent(f7.bfloat16().float()).bfloat16())
        assert not torch.equal(_codes(rounded), _codes(reference))
        with torch.autocast(device_type=device, dtype=torch.bfloat16):
            out = net(f7)
            codes, _ = net.encode(f7)
    assert out.latent.dtype == torch.float32
    assert torch.equal(_codes(out.latent), _codes(reference))
    assert torch.equal(codes, _codes(reference))


def test_bf16_mixed_predict_gives_the_float32_codes() -> None:
    """Lightning's bf16-mixed predict (what encoding with the training trainer runs) gives fp32's codes."""
    module = latent_module("smallcnn", bits=48, num_classes=4, in_channels=1, f7_dim=256)
    f7 = _make_undecided(module.net)
    data = TensorDataset(f7, torch.zeros(len(f7), dtype=torch.long), torch.arange(len(f7)))
    codes = {}
    for precision in ("32-true", "bf16-mixed"):
        trainer = pl.Trainer(
            accelerator="cpu",
            precision=precision,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
        )
        batches = trainer.predict(module, DataLoader(data, batch_size=64))
        codes[precision] = torch.cat([b["codes"] for b in batches])
    assert torch.equal(codes["bf16-mixed"], codes["32-true"])


# ----------------------------------------------------------------------------------------- SSDH terms


def test_ssdh_terms_match_the_caffe_normalisation() -> None:
    """Sum of squares over 2 x the number of terms, worked out by hand for a 2 x 2 batch."""
    latent = torch.tensor([[0.9, 0.2], [0.5, 0.7]])
    # forcing binary: -((0.4)^2 + (-0.3)^2 + 0^2 + (0.2)^2) / (2 * 4) = -0.29 / 8
    assert forcing_binary_loss(latent).item() == pytest.approx(-0.29 / 8)
    # balance: per-image means 0.55 and 0.6 -> (0.05^2 + 0.1^2) / (2 * 2) = 0.0125 / 4
    assert balanced_bits_loss(latent).item() == pytest.approx(0.0125 / 4)
    assert forcing_binary_loss(torch.tensor([[0.0, 1.0]])).item() == pytest.approx(-1 / 8)
