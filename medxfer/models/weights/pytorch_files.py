"""torchvision and RadImageNet-PyTorch state dicts → encoder keys (formats ``torchvision``, ``radimagenet-pt``).

What each architecture needs (its head keys, its family's key rules, how RadImageNet numbered its
children) is read from its :class:`~medxfer.models.encoders.ArchSpec`.
"""
from __future__ import annotations

import os
import re

import torch

from ..encoders import arch_spec
from .errors import WeightsError

State = dict[str, torch.Tensor]

_DENSENET_OLD = re.compile(r"^(.*denselayer\d+)\.(norm|relu|conv)\.([12])\.(.+)$")
_DENSENET_NEW = re.compile(r"^(.*denselayer\d+)\.(norm[12]|conv[12])\.(.+)$")


def _densenet_key(key: str) -> str:
    """torchvision DenseNet layer keys → MONAI's (``.layers.`` infix)."""
    old = _DENSENET_OLD.match(key)  # torchvision < 0.3: denselayer1.norm.1.weight
    if old:
        return f"{old.group(1)}.layers.{old.group(2)}{old.group(3)}.{old.group(4)}"
    new = _DENSENET_NEW.match(key)
    return f"{new.group(1)}.layers.{new.group(2)}.{new.group(3)}" if new else key


def from_torchvision(state: State, arch: str) -> tuple[State, list[str]]:
    """torchvision ``resnet*``/``densenet*`` keys → encoder keys; returns (state, skipped head keys)."""
    spec = arch_spec(arch)
    head = re.compile(spec.head_pattern) if spec.head_pattern else None
    out, skipped = {}, []
    for key, value in state.items():
        if head is not None and head.match(key):
            skipped.append(key)
            continue
        out[_densenet_key(key) if spec.family == "densenet" else key] = value
    return out, skipped


def from_radimagenet_pt(state: State, arch: str, path: str | os.PathLike) -> tuple[State, list[str]]:
    """RadImageNet's PyTorch release: ``backbone = nn.Sequential(*torchvision_model.children()[:k])``."""
    spec = arch_spec(arch)
    children = dict(spec.radimagenet_children)
    modules = tuple(f"{module}." for module in children.values())
    renamed, heads = {}, []
    for key, value in state.items():
        if not key.startswith("backbone."):
            if key.startswith(modules):  # already an encoder key: kept, strict loading judges it
                renamed[key] = value
            else:  # a head next to the backbone
                heads.append(key)
            continue
        if not children:
            raise WeightsError(f"{path}: RadImageNet PyTorch weights exist for ResNet50 and DenseNet121, not {arch}")
        index, _, rest = key[len("backbone."):].partition(".")
        if index not in children:
            raise WeightsError(f"{path}: key {key} is not part of a torchvision {spec.title} backbone")
        renamed[f"{children[index]}.{rest}"] = value
    mapped, skipped = from_torchvision(renamed, arch)
    return mapped, heads + skipped
