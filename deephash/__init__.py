"""deephash: deep supervised hashing for image retrieval.

Re-implements *Deep Learning of Binary Hash Codes for Fast Image Retrieval*
(Lin, Yang, Hsiao, Chen, CVPR Workshops 2015): a latent sigmoid layer H between
F7 and F8 of an ImageNet CNN, trained point-wise with softmax cross-entropy;
codes are H >= 0.5; retrieval is Hamming coarse search re-ranked by L2 on F7.
"""

__version__ = "0.1.0"

from omegaconf import OmegaConf as _OmegaConf

from deephash.utils.logging import quiet_third_party as _quiet_third_party

_quiet_third_party()

# conf/data: MNIST and CIFAR-10 default to their native resolution for the small CNNs and to the paper's
# ImageNet preprocessing for the ImageNet backbones.
_OmegaConf.register_new_resolver(
    "deephash.input_transform",
    lambda backbone: "native" if backbone in ("smallcnn", "mnistcnn") else "imagenet",
    replace=True,
)


def __getattr__(name: str):
    # ``deephash.Searcher`` without importing torch and FAISS for ``import deephash`` alone
    if name == "Searcher":
        from deephash.retrieval.searcher import Searcher

        return Searcher
    raise AttributeError(f"module 'deephash' has no attribute {name!r}")
