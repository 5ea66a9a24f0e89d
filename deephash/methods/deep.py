"""The contract of a deep hashing method: a head on F7, a loss, a code rule and a re-rank feature.

The shared machinery (``deephash.models``: the backbone cut at F7, the LightningModule with its optimizer
groups, metrics, bit statistics and ``predict_step``) is the same for every method. A method supplies only:

* a :class:`HashHead` subclass that sets ``name`` (which registers it): F7 ``(B, f7_dim)`` ->
  :class:`HeadOutput` (the relaxed codes ``latent (B, bits)`` and, if the method classifies, ``logits``),
  its ``code_rule`` (``threshold``: bit = latent >= 0.5, for sigmoid outputs; ``sign``: bit = latent >= 0)
  and, if it follows a schedule, :meth:`HashHead.update`;
* a :class:`HashLoss` subclass: ``loss(out, labels, index) -> scalar`` on a batch's :class:`HashOutput`
  (``index``: the samples' pool indices, for a method with per-sample targets) and, if it learns something
  from the whole training set first (CNNH's target codes), :meth:`HashLoss.setup`;
* ``conf/method/<name>.yaml``: the head and loss with their hyper-parameters (Hydra ``_partial_``, completed
  by the network and the module) and ``net.features``, the layer the hierarchical and euclidean modes
  re-rank on (``f7``, the paper's choice, or ``latent``).
"""

from __future__ import annotations

from typing import Any, ClassVar, NamedTuple

import torch
from torch import nn

from deephash.utils.errors import ConfigError

CODE_RULES = ("threshold", "sign")
INITS = ("torch", "caffe")
# every deep method by name, filled as their modules are imported (deephash.methods.registry imports all)
DEEP_METHODS: dict[str, type[HashHead]] = {}


class HeadOutput(NamedTuple):
    latent: torch.Tensor  # (B, bits) relaxed codes
    logits: torch.Tensor | None  # (B, num_classes), None for a method without a classifier


class HashOutput(NamedTuple):
    """A network's forward pass: what a loss sees."""

    logits: torch.Tensor | None  # (B, num_classes)
    latent: torch.Tensor  # (B, bits) relaxed codes, float32
    f7: torch.Tensor  # (B, f7_dim)


class HashHead(nn.Module):
    """F7 -> relaxed codes (and logits). The hash layer is ``self.latent = Linear(in_features, bits)``; methods
    with ``classifier = True`` also get ``self.classifier = Linear(bits, num_classes)`` (built in that order,
    so a seed gives the same weights whatever the method).

    ``init``: ``torch`` keeps PyTorch's default (uniform) initialisation; ``caffe`` uses the fillers of the
    paper's prototxt: hash-layer weights N(0, 0.005) with bias ``caffe_bias``, classifier N(0, 0.01), bias 0.
    """

    name: ClassVar[str]
    code_rule: ClassVar[str] = "sign"
    classifier: nn.Linear | None
    has_classifier: ClassVar[bool] = False
    caffe_bias: ClassVar[float] = 0.0

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "name" in cls.__dict__:
            if cls.code_rule not in CODE_RULES:
                raise TypeError(
                    f"{cls.__name__}.code_rule must be one of {CODE_RULES}, got {cls.code_rule!r}"
                )
            DEEP_METHODS[cls.name] = cls

    def __init__(self, in_features: int, bits: int, num_classes: int, *, init: str = "torch") -> None:
        super().__init__()
        if init not in INITS:
            raise ConfigError(f"model.net.head.init must be one of {', '.join(INITS)}, got {init!r}")
        self.bits, self.num_classes = bits, num_classes
        self.latent = nn.Linear(in_features, bits)
        self.classifier = nn.Linear(bits, num_classes) if self.has_classifier else None
        if init == "caffe":
            self._caffe_init()

    def forward(self, f7: torch.Tensor) -> HeadOutput:
        raise NotImplementedError

    def codes(self, latent: torch.Tensor) -> torch.Tensor:
        """Binary codes ``(B, bits) bool`` of relaxed codes ``latent`` under the method's ``code_rule``."""
        return latent >= (0.5 if self.code_rule == "threshold" else 0.0)

    def saturation(self, latent: torch.Tensor) -> torch.Tensor:
        """How decided each relaxed bit is, in [0, 1] (1: at a binary value): the ``binariness`` statistic."""
        if self.code_rule == "threshold":
            return 2 * (latent - 0.5).abs()
        return latent.abs().clamp(max=1.0)

    def update(self, step: int) -> None:
        """Called with the global step before every training batch: a schedule (HashNet's scale) goes here."""

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """The head's parameters by role (``latent``, ``classifier``), for per-layer learning rates."""
        groups = {"latent": list(self.latent.parameters())}
        if self.classifier is not None:
            groups["classifier"] = list(self.classifier.parameters())
        return groups

    @torch.no_grad()
    def _caffe_init(self) -> None:
        nn.init.normal_(self.latent.weight, 0.0, 0.005)
        nn.init.constant_(self.latent.bias, self.caffe_bias)
        if self.classifier is not None:
            nn.init.normal_(self.classifier.weight, 0.0, 0.01)
            nn.init.zeros_(self.classifier.bias)


class LinearHead(HashHead):
    """The hash layer's output as it is, codes by its sign, no classifier: the head of the pairwise methods
    whose losses act on unbounded relaxed codes (DPSH, DSH). A subclass sets ``name``."""

    code_rule = "sign"

    def forward(self, f7: torch.Tensor) -> HeadOutput:
        return HeadOutput(self.latent(f7), None)


class HashLoss(nn.Module):
    """``loss(out, labels, index) -> scalar`` for a batch: ``out`` the network's :class:`HashOutput`,
    ``labels (B,)`` int64 class indices, ``index (B,)`` int64 the samples' pool indices. Built by the
    LightningModule with the code length and the number of classes (the YAML's ``_partial_`` supplies the
    method's own hyper-parameters). State a loss keeps in buffers is saved in checkpoints, so a resumed run
    continues with it."""

    def __init__(self, bits: int, num_classes: int) -> None:
        super().__init__()
        self.bits, self.num_classes = bits, num_classes

    def setup(self, labels: torch.Tensor, index: torch.Tensor) -> None:
        """Called once before training (and again on resume) with every training sample's label ``(n,)`` and
        pool index ``(n,)``; a method that learns from the whole training set before the network does (CNNH's
        stage 1) overrides it. The default does nothing."""

    def forward(self, out: HashOutput, labels: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


def similarity(labels: torch.Tensor) -> torch.Tensor:
    """``(B, B)`` float: 1 where two samples share their class, else 0 (the pairwise methods' targets)."""
    return (labels[:, None] == labels[None, :]).float()


def distinct_pairs(n: int, device: torch.device | str | None = None) -> torch.Tensor:
    """``(n, n)`` bool: True for the pairs of two different samples of a batch (off the diagonal)."""
    return ~torch.eye(n, dtype=torch.bool, device=device)


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The mean of ``values`` where ``mask`` is True, and 0 where it is True nowhere (a batch of one sample
    has no pairs; a batch of one class has no dissimilar pair)."""
    return torch.where(mask, values, torch.zeros_like(values)).sum() / mask.sum().clamp(min=1)


def sign_codes(latent: torch.Tensor) -> torch.Tensor:
    """``latent`` as +-1 codes under the ``sign`` rule (+1 where latent >= 0, as :meth:`HashHead.codes`):
    unlike ``torch.sign``, 0 is +1, so these signs are the stored bits."""
    return torch.where(latent >= 0, 1.0, -1.0).to(latent.dtype)
