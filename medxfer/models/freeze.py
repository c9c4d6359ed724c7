"""Freeze policies (``none``, ``all``, ``top:K``) and optimizer parameter groups.

``all`` freezes every encoder parameter and keeps its blocks in eval mode (BatchNorm running
statistics untouched, as ``layer.trainable = False`` does in Keras; no dropout or drop-connect,
so frozen features are a fixed function that can be cached). ``top:K`` leaves the last K
blocks of :meth:`Encoder.blocks` trainable (residual blocks, dense layers, MBConv or
depthwise-separable blocks; the stem counts as the first block).
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from .encoders import Encoder


@dataclass(frozen=True)
class FreezeSummary:
    """What a policy froze: block names and parameter counts."""

    policy: str
    frozen_blocks: tuple[str, ...]
    trainable_blocks: tuple[str, ...]
    frozen_parameters: int
    trainable_parameters: int


def parse_policy(policy: str) -> tuple[str, int]:
    """``"none"`` → ("none", 0); ``"all"``; ``"top:K"`` → ("top", K); anything else is an error."""
    policy = str(policy).strip().lower()
    if policy in ("none", "all"):
        return policy, 0
    if policy.startswith("top:"):
        try:
            k = int(policy[4:])
        except ValueError:
            k = -1
        if k >= 1:
            return "top", k
    raise ValueError(f"unknown freeze policy {policy!r}; use none, all or top:K (K >= 1 trainable blocks)")


def apply_freeze(encoder: Encoder, policy: str) -> FreezeSummary:
    """Apply ``policy`` to ``encoder`` in place (undoing any earlier policy first)."""
    kind, k = parse_policy(policy)
    for p in encoder.parameters():
        p.requires_grad_(True)
    blocks = encoder.blocks()
    n_frozen = {"none": 0, "all": len(blocks), "top": max(len(blocks) - k, 0)}[kind]
    names = {id(m): n for n, m in encoder.named_modules()}
    frozen_modules = []
    for _, modules in blocks[:n_frozen]:
        for module in modules:
            for p in module.parameters():
                p.requires_grad_(False)
            frozen_modules.append(names[id(module)])
    encoder.frozen_blocks = tuple(frozen_modules)
    encoder.train(encoder.training)  # puts the frozen blocks into eval mode
    frozen = sum(p.numel() for p in encoder.parameters() if not p.requires_grad)
    trainable = sum(p.numel() for p in encoder.parameters() if p.requires_grad)
    return FreezeSummary(policy=policy if kind != "top" else f"top:{k}",
                         frozen_blocks=tuple(n for n, _ in blocks[:n_frozen]),
                         trainable_blocks=tuple(n for n, _ in blocks[n_frozen:]),
                         frozen_parameters=frozen, trainable_parameters=trainable)


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
