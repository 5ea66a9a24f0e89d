"""LatentHashNet shapes, code thresholding, weight loading and learning-rate groups."""

from __future__ import annotations

import functools

import pytest
import torch

from deephash.methods.latent import balanced_bits_loss, forcing_binary_loss
from deephash.models.backbones import build_backbone
from deephash.models.module import bit_balance_stats
from deephash.utils.errors import ConfigError
from tests.fixtures_models import latent_module, latent_net


@pytest.mark.parametrize(
    ("backbone", "size", "f7_dim"),
    [("alexnet", 227, 4096), ("vgg16", 64, 4096), ("resnet50", 64, 2048), ("smallcnn", 8, 256)],
)
def test_forward_shapes_every_backbone(backbone: str, size: int, f7_dim: int) -> None:
    torch.manual_seed(0)
    channels = 1 if backbone == "smallcnn" else 3
    net = latent_net(backbone, bits=12, num_classes=5, in_channels=channels).eval()
    x = torch.randn(2, channels, size, size)
    out = net(x)
    assert out.logits.shape == (2, 5)
    assert out.latent.shape == (2, 12)
    assert out.f7.shape == (2, f7_dim)
    assert torch.all((out.latent >= 0) & (out.latent <= 1))
    codes, f7 = net.encode(x)
    assert codes.dtype == torch.bool and codes.shape == (2, 12)
    assert torch.equal(codes, out.latent >= 0.5)
    assert torch.equal(f7, out.f7)


def test_alexnet_f7_is_relu7_of_torchvision() -> None:
    """F7 equals torchvision AlexNet's classifier output just before fc8."""
    from torchvision.models import alexnet

    torch.manual_seed(0)
    reference = alexnet(weights=None).eval()
    backbone = build_backbone("alexnet", None)
    backbone.features.load_state_dict(
        {k: v for k, v in _remap_alexnet(reference.state_dict()).items()}, strict=True
    )
    backbone.features.eval()
    x = torch.randn(1, 3, 227, 227)
    with torch.no_grad():
        trunk = torch.flatten(reference.avgpool(reference.features(x)), 1)
        expected = reference.classifier[:6](trunk)  # drop6, fc6, relu6, drop7, fc7, relu7
        assert torch.allclose(backbone.features(x), expected, atol=1e-5)


def _remap_alexnet(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in state.items():
        if k.startswith("features."):
            out["trunk." + k[len("features.") :]] = v
        elif k.startswith("classifier.") and not k.startswith("classifier.6."):
            out["head." + k[len("classifier.") :]] = v
    return out


def test_codes_threshold_at_half() -> None:
    latent = torch.tensor([[0.49, 0.5, 0.51, 0.0, 1.0]])
    head = latent_net().head
    assert head.codes(latent).tolist() == [[False, True, True, False, True]]


def test_weights_from_local_state_dict(tmp_path) -> None:
    from torchvision.models import alexnet

    torch.manual_seed(1)
    source = alexnet(weights=None)
    path = tmp_path / "alexnet.pth"
    torch.save(source.state_dict(), path)
    backbone = build_backbone("alexnet", str(path))
    assert torch.equal(backbone.features.trunk[0].weight, source.features[0].weight)
    assert torch.equal(backbone.features.head[1].weight, source.classifier[1].weight)


def test_missing_weights_file_is_a_clear_error(tmp_path) -> None:
    with pytest.raises(ConfigError, match="model.net.weights file not found: .*nope.pth"):
        build_backbone("alexnet", str(tmp_path / "nope.pth"))


def test_corrupt_weights_file_is_a_clear_error(tmp_path) -> None:
    path = tmp_path / "bad.pth"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match="cannot load model.net.weights"):
        build_backbone("alexnet", str(path))


def test_unknown_backbone_lists_choices() -> None:
    with pytest.raises(
        ConfigError, match="unknown backbone 'lenet'; expected one of: alexnet, vgg16, resnet50, smallcnn"
    ):
        build_backbone("lenet")


@pytest.mark.parametrize("bits", [0, 4097, 12.5, "48", True])
def test_bits_must_be_integer_in_range(bits) -> None:
    with pytest.raises(ConfigError, match=r"model.net.bits must be an integer in 1..4096"):
        latent_net("smallcnn", bits=bits, num_classes=3, in_channels=1)


def test_lr_groups_follow_multipliers() -> None:
    sgd = functools.partial(torch.optim.SGD, lr=0.001, momentum=0.9, weight_decay=5e-4)
    module = latent_module(
        "smallcnn",
        bits=16,
        num_classes=4,
        in_channels=1,
        optimizer=sgd,
        lr_mult={"backbone": 1.0, "latent": 1.0, "classifier": 10.0},
    )
    optimizer = module.configure_optimizers()
    groups = {g["name"]: g for g in optimizer.param_groups}
    assert groups["backbone/weight"]["lr"] == pytest.approx(0.001)
    assert groups["latent/weight"]["lr"] == pytest.approx(0.001)
    assert groups["classifier/weight"]["lr"] == pytest.approx(0.01)
    assert groups["classifier/bias"]["lr"] == pytest.approx(0.02)
    assert groups["classifier/bias"]["weight_decay"] == 0.0
    assert groups["backbone/weight"]["weight_decay"] == pytest.approx(5e-4)
    counted = sum(p.numel() for g in optimizer.param_groups for p in g["params"])
    assert counted == sum(p.numel() for p in module.net.parameters())


def test_unknown_lr_group_is_rejected() -> None:
    with pytest.raises(ConfigError, match="model.lr_mult has unknown groups \\['fc8'\\]"):
        latent_module("smallcnn", bits=8, num_classes=3, in_channels=1, lr_mult={"fc8": 10.0})


def test_optional_ssdh_terms() -> None:
    binary = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    undecided = torch.full((2, 2), 0.5)
    assert forcing_binary_loss(binary) < forcing_binary_loss(undecided)
    assert balanced_bits_loss(binary) == 0  # each code fires half its bits
    assert balanced_bits_loss(torch.ones(2, 2)) == pytest.approx(0.25 / 2)  # (1 - 0.5)^2 / 2
    latent = torch.tensor([[0.9, 0.1], [0.8, 0.2]])
    head = latent_net(bits=2).head
    stats = bit_balance_stats(head.codes(latent), head.saturation(latent))
    assert stats["dead_bits"] == 2  # bit 0 always fires, bit 1 never
    assert stats["fire_rate_mean"] == pytest.approx(0.5)


def test_channels_last_gives_same_output() -> None:
    torch.manual_seed(0)
    a = latent_module("smallcnn", bits=8, num_classes=3, in_channels=1).eval()
    b = latent_module("smallcnn", bits=8, num_classes=3, in_channels=1, channels_last=True).eval()
    b.net.load_state_dict(a.net.state_dict())
    x = torch.randn(2, 1, 8, 8)
    assert torch.allclose(a(x).logits, b(x).logits, atol=1e-6)


def test_compiled_module_checkpoints_like_an_eager_one() -> None:
    eager = latent_module("smallcnn", bits=8, num_classes=3, in_channels=1)
    compiled = latent_module("smallcnn", bits=8, num_classes=3, in_channels=1, compile=True)
    assert set(compiled.state_dict()) == set(eager.state_dict())
    eager.load_state_dict(compiled.state_dict())  # strict: no extra or missing keys


# ---- the architecture, pinned ---------------------------------------------------------------------------


@pytest.mark.parametrize("bits", [12, 48])
def test_classifier_consumes_the_latent_layer(bits: int) -> None:
    """F8 reads H (paper fig. 1): its input width is ``bits`` and it is fed exactly H's activations."""
    torch.manual_seed(0)
    net = latent_net("smallcnn", bits=bits, num_classes=5, in_channels=1).eval()
    assert net.head.latent.out_features == bits and net.head.classifier.in_features == bits
    seen = {}
    net.head.classifier.register_forward_hook(lambda m, args, out: seen.setdefault("input", args[0]))
    out = net(torch.randn(3, 1, 8, 8))
    assert torch.equal(seen["input"], out.latent)
    assert torch.allclose(out.logits, net.head.classifier(out.latent))


def test_a_training_step_trains_the_latent_layer() -> None:
    """The hash layer learns from the classification loss (it would not if F8 read F7)."""
    torch.manual_seed(0)
    module = latent_module(
        "smallcnn",
        bits=16,
        num_classes=4,
        in_channels=1,
        optimizer=functools.partial(torch.optim.SGD, lr=0.1),
    )
    optimizer = module.configure_optimizers()
    before = {name: p.detach().clone() for name, p in module.net.named_parameters()}
    x, y = torch.randn(8, 1, 8, 8), torch.arange(8) % 4
    module.train()
    out = module(x)
    module.loss(out, y, torch.arange(8)).backward()
    optimizer.step()
    for name in ("head.latent.weight", "head.latent.bias", "head.classifier.weight"):
        assert not torch.equal(before[name], dict(module.net.named_parameters())[name]), name
    assert module.net.head.latent.weight.grad.abs().sum() > 0


def test_small_cnn_layers_are_pinned() -> None:
    """The small CNN's head: drop, F6, relu6, drop, F7, relu7; then the net's drop7 between F7 and H."""
    from torch import nn

    net = latent_net("smallcnn", bits=8, num_classes=3, in_channels=1, f7_dim=64, dropout=0.5)
    head = list(net.backbone.fc)
    assert [type(layer) for layer in head] == [nn.Dropout, nn.Linear, nn.ReLU, nn.Dropout, nn.Linear, nn.ReLU]
    assert head[4].out_features == 64 and net.head.latent.in_features == 64
    assert isinstance(net.dropout, nn.Dropout) and net.dropout.p == 0.5
    net.eval()
    torch.manual_seed(1)
    x = torch.randn(16, 1, 8, 8)
    out = net(x)
    assert (out.f7 >= 0).all() and (out.f7 == 0).any()  # relu7: F7 is rectified
    assert torch.equal(net(x).latent, out.latent)  # eval: dropout off, deterministic
    net.train()
    torch.manual_seed(2)
    trained = net(x)
    assert not torch.allclose(trained.latent, torch.sigmoid(net.head.latent(trained.f7)))  # drop7 is applied
