"""Freeze policies (``none``, ``all``, ``top:K``, ``top_layers:K``) and optimizer parameter groups.

``all`` freezes every encoder parameter and keeps its blocks in eval mode (BatchNorm running
statistics untouched, as ``layer.trainable = False`` does in Keras; no dropout or drop-connect,
so frozen features are a fixed function that can be cached). ``top:K`` leaves the last K
blocks of :meth:`Encoder.blocks` trainable (residual blocks, dense layers, MBConv or
depthwise-separable blocks; the stem counts as the first block).

``top_layers:K`` is freezing as the Keras papers did it, by layer position. RadImageNet's
``unfreezetop10`` (``acl/acl_train.py`` and the other ``*_train.py`` scripts of
github.com/BMEII-AI/RadImageNet) builds ``base_model = ResNet50(weights=..., include_top=False,
pooling='avg', input_shape=(s, s, 3))`` (or DenseNet121, InceptionV3, InceptionResNetV2), runs
``for layer in base_model.layers[:-10]: layer.trainable = False`` and puts Dropout and a Dense head
on ``base_model.output``; ``freezeall`` freezes every layer (``all`` here), ``unfreezeall`` none
(``none``). So K counts the entries of that ``base_model.layers`` list (:mod:`.keras_layers`): the
``InputLayer`` first, every activation, padding, pooling, addition and concatenation, and the
global average pooling layer last — which is one of the K. ``top_layers:10`` on ResNet50 leaves
``conv5_block3_1_bn`` … ``avg_pool`` trainable (the last bottleneck's two last convolutions and its
three BatchNorms) and freezes its first convolution ``conv5_block3_1_conv`` and everything before.

A Keras layer's weights live in one PyTorch module (the ``.h5`` importer's map): the parameters of
the last K layers train, all others are frozen. A frozen BatchNorm runs in inference mode, as a
Keras BatchNormalization with ``trainable = False`` does (its module is kept in eval mode through
:attr:`Encoder.frozen_blocks`); a BatchNorm among the last K trains and updates its statistics. The
trainable-parameter count equals Keras's ``sum(np.prod(w.shape) for w in model.trainable_weights)``
(moving statistics are non-trainable in Keras, buffers here). It applies to the encoders with a Keras
network (:attr:`ArchSpec.keras_application`), ``densenet121`` included (MONAI layout, same layers).

A policy that is another one in disguise (``top:99`` on an encoder of 9 blocks is ``none``,
``top_layers:1`` is ``all``: the pooling layer has no weights) is applied, logged as a warning and
recorded in :attr:`FreezeSummary.warning`.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

from torch import nn

from .encoders import ARCHS, Encoder
from .keras_layers import keras_applications, keras_layer_modules, keras_layers

logger = logging.getLogger(__name__)

POLICY_FORMS = "none, all, top:K (the last K blocks trainable) or top_layers:K (the last K Keras layers trainable)"


@dataclass(frozen=True)
class FreezeSummary:
    """What a policy froze: block names and parameter counts; for ``top_layers:K`` also the Keras
    layers left trainable; ``warning`` when the policy amounts to another one (``""`` otherwise)."""

    policy: str
    frozen_blocks: tuple[str, ...]
    trainable_blocks: tuple[str, ...]  # top_layers: the blocks with at least one trainable parameter
    frozen_parameters: int
    trainable_parameters: int
    trainable_layers: tuple[str, ...] = ()  # top_layers: Keras layer names (model.layers[-K:]), in order
    warning: str = ""

    def params(self) -> dict[str, str]:
        """The run parameters that record what the policy did (MLflow params are short: a long Keras layer
        list is logged as its first and last names and its length)."""
        out = {"freeze.trainable_parameters": str(self.trainable_parameters)}
        if self.trainable_layers:
            layers = self.trainable_layers
            out["freeze.trainable_layers"] = (", ".join(layers) if len(layers) <= 12 else
                                              f"{layers[0]} … {layers[-1]} ({len(layers)} Keras layers)")
        if self.warning:
            out["freeze.warning"] = self.warning
        return out


def parse_policy(policy: str) -> tuple[str, int]:
    """``"none"`` → ("none", 0); ``"all"``; ``"top:K"`` → ("top", K); ``"top_layers:K"`` →
    ("top_layers", K); anything else (or K < 1) is a ValueError."""
    policy = str(policy).strip().lower()
    if policy in ("none", "all"):
        return policy, 0
    kind, colon, count = policy.partition(":")
    if colon and kind in ("top", "top_layers"):
        try:
            k = int(count)
        except ValueError:
            k = -1
        if k >= 1:
            return kind, k
    raise ValueError(f"unknown freeze policy {policy!r}; use {POLICY_FORMS}, K >= 1")


def keras_layer_archs() -> list[str]:
    """The encoders ``top_layers:K`` applies to: a Keras network whose layer list is known."""
    return [name for name, spec in ARCHS.items() if spec.keras_application in keras_applications()]


def top_layers_problem(arch: str) -> str | None:
    """Why ``top_layers:K`` cannot apply to ``arch`` (None when it can)."""
    if arch in keras_layer_archs():
        return None
    return (f"freeze top_layers:K counts the layers of a keras.applications network and {arch} is not one "
            f"(top_layers applies to {', '.join(keras_layer_archs())}); freeze {arch} by blocks with top:K")


@dataclass
class _Frozen:
    """What one kind of policy decided: modules kept in eval mode, which blocks train, Keras layers."""

    modules: list[str]
    block_trains: list[bool]
    trainable_layers: tuple[str, ...] = ()


def _freeze_blocks(encoder: Encoder, kind: str, k: int) -> _Frozen:
    """none / all / top:K: the first blocks frozen (a block without parameters counts where it stands)."""
    blocks = encoder.blocks()
    n_frozen = {"none": 0, "all": len(blocks), "top": max(len(blocks) - k, 0)}[kind]
    names = {id(m): n for n, m in encoder.named_modules()}
    modules = []
    for _, block in blocks[:n_frozen]:
        for module in block:
            for p in module.parameters():
                p.requires_grad_(False)
            modules.append(names[id(module)])
    return _Frozen(modules, [i >= n_frozen for i in range(len(blocks))])


def _freeze_keras_layers(encoder: Encoder, k: int) -> _Frozen:
    """top_layers:K: everything frozen but the modules of the last K Keras layers; a block trains
    when any of its parameters does."""
    problem = top_layers_problem(encoder.arch)
    if problem:
        raise ValueError(problem)
    application = encoder.spec.keras_application
    layers = keras_layers(application)
    modules_of = keras_layer_modules(application)
    cut = max(len(layers) - k, 0)  # Keras layers[:-K] are frozen (none when K >= len)
    for p in encoder.parameters():
        p.requires_grad_(False)
    for layer in layers[cut:]:
        if layer.name in modules_of:
            for p in encoder.get_submodule(modules_of[layer.name]).parameters():
                p.requires_grad_(True)
    trains = [any(p.requires_grad for m in block for p in m.parameters()) for _, block in encoder.blocks()]
    return _Frozen([modules_of[layer.name] for layer in layers[:cut] if layer.name in modules_of], trains,
                   tuple(layer.name for layer in layers[cut:]))


def _disguise(encoder: Encoder, kind: str, k: int, policy: str, trainable: int, total: int) -> str:
    """The warning for a block or layer count that leaves all or nothing trainable ("" when it does not)."""
    if kind not in ("top", "top_layers"):
        return ""
    same = f"freeze {policy} on {encoder.arch} leaves"
    layers = keras_layers(encoder.spec.keras_application) if kind == "top_layers" else ()
    if trainable == total:
        what = (f"all {len(encoder.blocks())} blocks" if kind == "top"
                else f"every layer with weights of its {len(layers)} Keras layers")
        return f"{same} {what} trainable: it is the same as freeze: none"
    if trainable == 0:
        last = (f"its last {k} block(s) hold no parameters" if kind == "top" else
                f"its last {k} Keras layer(s), {', '.join(layer.name for layer in layers[-k:])}, hold no weights")
        return f"{same} nothing trainable in the encoder ({last}): it is the same as freeze: all"
    return ""


def apply_freeze(encoder: Encoder, policy: str) -> FreezeSummary:
    """Apply ``policy`` to ``encoder`` in place (undoing any earlier policy first).

    ``top_layers:K`` on an encoder without a Keras network is a ValueError naming those it applies to."""
    kind, k = parse_policy(policy)
    for p in encoder.parameters():
        p.requires_grad_(True)
    frozen_by = _freeze_keras_layers(encoder, k) if kind == "top_layers" else _freeze_blocks(encoder, kind, k)
    encoder.frozen_blocks = tuple(frozen_by.modules)
    encoder.train(encoder.training)  # puts the frozen modules into eval mode
    frozen = sum(p.numel() for p in encoder.parameters() if not p.requires_grad)
    trainable = sum(p.numel() for p in encoder.parameters() if p.requires_grad)
    canonical = kind if kind in ("none", "all") else f"{kind}:{k}"
    warning = _disguise(encoder, kind, k, canonical, trainable, frozen + trainable)
    if warning:
        logger.warning(warning)
    names = [name for name, _ in encoder.blocks()]
    return FreezeSummary(policy=canonical,
                         frozen_blocks=tuple(n for n, t in zip(names, frozen_by.block_trains) if not t),
                         trainable_blocks=tuple(n for n, t in zip(names, frozen_by.block_trains) if t),
                         frozen_parameters=frozen, trainable_parameters=trainable,
                         trainable_layers=frozen_by.trainable_layers, warning=warning)


def parameter_groups(model: nn.Module, lr: float, encoder_lr: float | None = None,
                     encoder_attr: str = "encoder") -> list[dict]:
    """Optimizer groups: the encoder's trainable parameters at ``encoder_lr`` (default ``lr``),
    everything else (head, decoder) at ``lr``. Frozen parameters are left out."""
    encoder = getattr(model, encoder_attr)
    enc_ids = {id(p) for p in encoder.parameters()}
    enc = [p for p in encoder.parameters() if p.requires_grad]
    rest = [p for p in model.parameters() if id(p) not in enc_ids and p.requires_grad]
    groups = [{"params": rest, "lr": lr, "name": "head"}]
    if enc:
        groups.append({"params": enc, "lr": lr if encoder_lr is None else encoder_lr, "name": "encoder"})
    return groups
