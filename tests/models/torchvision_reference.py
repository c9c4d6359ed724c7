"""torchvision-format state dicts and a functional forward that uses them, written from the
torchvision architecture (not from medxfer's modules), so a test can check that medxfer's
encoders load these files and compute the same thing.

torchvision itself does not run on this machine (its operators fail to load with torch 2.13),
hence the independent re-implementation.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

RESNET = {18: ("basic", [2, 2, 2, 2]), 34: ("basic", [3, 4, 6, 3]), 50: ("bottleneck", [3, 4, 6, 3])}
DENSENET121 = {"growth": 32, "bn_size": 4, "blocks": (6, 12, 24, 16), "init": 64}


def _bn(state, prefix, c, g):
    state[f"{prefix}.weight"] = torch.rand(c, generator=g) + 0.5
    state[f"{prefix}.bias"] = torch.randn(c, generator=g) * 0.1
    state[f"{prefix}.running_mean"] = torch.randn(c, generator=g) * 0.1
    state[f"{prefix}.running_var"] = torch.rand(c, generator=g) + 0.5
    state[f"{prefix}.num_batches_tracked"] = torch.tensor(100)


def _conv(state, key, cout, cin, k, g):
    state[key] = torch.randn(cout, cin, k, k, generator=g) * (2.0 / (cin * k * k)) ** 0.5


def resnet_state_dict(depth: int, seed: int = 0, num_classes: int = 1000) -> dict[str, torch.Tensor]:
    """Random weights with torchvision ``resnet{depth}`` key names and shapes (``fc`` included)."""
    g = torch.Generator().manual_seed(seed)
    block, layers = RESNET[depth]
    exp = 4 if block == "bottleneck" else 1
    s: dict[str, torch.Tensor] = {}
    _conv(s, "conv1.weight", 64, 3, 7, g)
    _bn(s, "bn1", 64, g)
    inp = 64
    for li, (planes, n) in enumerate(zip((64, 128, 256, 512), layers), start=1):
        for b in range(n):
            p = f"layer{li}.{b}"
            stride = 2 if (b == 0 and li > 1) else 1
            if block == "basic":
                _conv(s, f"{p}.conv1.weight", planes, inp, 3, g)
                _bn(s, f"{p}.bn1", planes, g)
                _conv(s, f"{p}.conv2.weight", planes, planes, 3, g)
                _bn(s, f"{p}.bn2", planes, g)
            else:
                _conv(s, f"{p}.conv1.weight", planes, inp, 1, g)
                _bn(s, f"{p}.bn1", planes, g)
                _conv(s, f"{p}.conv2.weight", planes, planes, 3, g)
                _bn(s, f"{p}.bn2", planes, g)
                _conv(s, f"{p}.conv3.weight", planes * exp, planes, 1, g)
                _bn(s, f"{p}.bn3", planes * exp, g)
            if b == 0 and (stride != 1 or inp != planes * exp):
                _conv(s, f"{p}.downsample.0.weight", planes * exp, inp, 1, g)
                _bn(s, f"{p}.downsample.1", planes * exp, g)
            inp = planes * exp
    s["fc.weight"] = torch.randn(num_classes, inp, generator=g) * 0.01
    s["fc.bias"] = torch.zeros(num_classes)
    return s


def _bn_f(x, s, p):
    return F.batch_norm(x, s[f"{p}.running_mean"], s[f"{p}.running_var"], s[f"{p}.weight"], s[f"{p}.bias"],
                        training=False, eps=1e-5)


def resnet_forward(s: dict[str, torch.Tensor], x: torch.Tensor, depth: int) -> torch.Tensor:
    """torchvision ResNet up to ``layer4`` (the deepest feature map)."""
    block, layers = RESNET[depth]
    x = F.relu(_bn_f(F.conv2d(x, s["conv1.weight"], stride=2, padding=3), s, "bn1"))
    x = F.max_pool2d(x, 3, 2, 1)
    for li, n in enumerate(layers, start=1):
        for b in range(n):
            p = f"layer{li}.{b}"
            stride = 2 if (b == 0 and li > 1) else 1
            idt = x
            if block == "basic":
                y = F.relu(_bn_f(F.conv2d(x, s[f"{p}.conv1.weight"], stride=stride, padding=1), s, f"{p}.bn1"))
                y = _bn_f(F.conv2d(y, s[f"{p}.conv2.weight"], padding=1), s, f"{p}.bn2")
            else:  # torchvision v1.5: stride on the 3x3 conv
                y = F.relu(_bn_f(F.conv2d(x, s[f"{p}.conv1.weight"]), s, f"{p}.bn1"))
                y = F.relu(_bn_f(F.conv2d(y, s[f"{p}.conv2.weight"], stride=stride, padding=1), s, f"{p}.bn2"))
                y = _bn_f(F.conv2d(y, s[f"{p}.conv3.weight"]), s, f"{p}.bn3")
            if f"{p}.downsample.0.weight" in s:
                idt = _bn_f(F.conv2d(x, s[f"{p}.downsample.0.weight"], stride=stride), s, f"{p}.downsample.1")
            x = F.relu(y + idt)
    return x


def densenet121_state_dict(seed: int = 0, old_keys: bool = False) -> dict[str, torch.Tensor]:
    """Random weights with torchvision ``densenet121`` keys; ``old_keys`` gives the pre-0.3 style
    (``denselayer1.norm.1.weight``) that the published ``densenet121-a639ec97.pth`` still uses."""
    g = torch.Generator().manual_seed(seed)
    c = DENSENET121
    s: dict[str, torch.Tensor] = {}
    _conv(s, "features.conv0.weight", c["init"], 3, 7, g)
    _bn(s, "features.norm0", c["init"], g)
    ch = c["init"]
    for b, n in enumerate(c["blocks"], start=1):
        for i in range(1, n + 1):
            p = f"features.denseblock{b}.denselayer{i}"
            sep = "." if old_keys else ""
            _bn(s, f"{p}.norm{sep}1", ch, g)
            _conv(s, f"{p}.conv{sep}1.weight", c["bn_size"] * c["growth"], ch, 1, g)
            _bn(s, f"{p}.norm{sep}2", c["bn_size"] * c["growth"], g)
            _conv(s, f"{p}.conv{sep}2.weight", c["growth"], c["bn_size"] * c["growth"], 3, g)
            ch += c["growth"]
        if b < 4:
            _bn(s, f"features.transition{b}.norm", ch, g)
            _conv(s, f"features.transition{b}.conv.weight", ch // 2, ch, 1, g)
            ch //= 2
    _bn(s, "features.norm5", ch, g)
    s["classifier.weight"] = torch.randn(1000, ch, generator=g) * 0.01
    s["classifier.bias"] = torch.zeros(1000)
    if old_keys:  # the published file has no num_batches_tracked
        s = {k: v for k, v in s.items() if not k.endswith("num_batches_tracked")}
    return s


def densenet121_forward(s: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """torchvision DenseNet121 ``features`` followed by the ReLU of its classifier path."""
    s = {k.replace("norm.1", "norm1").replace("norm.2", "norm2").replace("conv.1", "conv1")
         .replace("conv.2", "conv2"): v for k, v in s.items()}
    x = F.relu(_bn_f(F.conv2d(x, s["features.conv0.weight"], stride=2, padding=3), s, "features.norm0"))
    x = F.max_pool2d(x, 3, 2, 1)
    for b, n in enumerate(DENSENET121["blocks"], start=1):
        for i in range(1, n + 1):
            p = f"features.denseblock{b}.denselayer{i}"
            y = F.conv2d(F.relu(_bn_f(x, s, f"{p}.norm1")), s[f"{p}.conv1.weight"])
            y = F.conv2d(F.relu(_bn_f(y, s, f"{p}.norm2")), s[f"{p}.conv2.weight"], padding=1)
            x = torch.cat([x, y], 1)
        if b < 4:
            p = f"features.transition{b}"
            x = F.avg_pool2d(F.conv2d(F.relu(_bn_f(x, s, f"{p}.norm")), s[f"{p}.conv.weight"]), 2, 2)
    return F.relu(_bn_f(x, s, "features.norm5"))
