"""Augmentation and weights normalisation of 2D batches on the training device.

The CPU pipeline (:func:`.pipelines.augmentations`) draws a random affine and a random gamma per
sample with MONAI transforms, one image at a time in the loader. On a GPU that work is cheaper done
on the whole batch after it reached the device: :class:`DeviceAugment` draws the same parameters from
the same distributions, per sample, and applies them with ``grid_sample`` and element-wise
arithmetic; :class:`DeviceNormalize` then applies the weights' normalisation
(:class:`~medxfer.models.preprocessing.Preprocessing`). Nothing here reads a value back to the host,
so the training loop never waits for the device.

The distributions (see :data:`AFFINE_PROB` and the constants beside it) are those of MONAI's
``RandAffined`` and ``RandAdjustContrastd`` as :func:`.pipelines.augmentations` configures them:

- with probability 0.5 an affine about the image centre: rotation ``U(-0.15, 0.15)`` rad, a scale
  factor ``1 + U(-0.1, 0.1)`` and a translation ``U(-8, 8)`` pixels, composed as MONAI composes them
  (rotate · translate · scale, mapping output pixels to input pixels), bilinear, zeros outside. The
  scale and the translation act along the first spatial axis only: ``RandAffined`` given one number
  per range draws one value, which MONAI's ``create_scale`` / ``create_translate`` apply to axis 0
  (the other axis keeps scale 1 and offset 0);
- with probability 0.3 a gamma ``U(0.8, 1.25)`` between the sample's own minimum and maximum;
- (optional, off for classification) a flip of the first spatial axis with probability 0.5.

``tests/transforms/test_device_augment.py`` checks that both paths agree, statistically.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ..models.preprocessing import Preprocessing

AFFINE_PROB = 0.5  # RandAffined(prob)
ROTATE_RANGE = 0.15  # radians, U(-r, r)
SCALE_RANGE = 0.1  # factor 1 + U(-r, r), first spatial axis (as RandAffined applies a single number)
TRANSLATE_RANGE = 8.0  # pixels, U(-r, r), first spatial axis (idem)
CONTRAST_SHARE = 0.6  # RandAdjustContrastd(prob = AFFINE_PROB * CONTRAST_SHARE)
GAMMA_RANGE = (0.8, 1.25)
FLIP_PROB = 0.5  # RandFlipd(spatial_axis=0), where flips are allowed
_EPSILON = 1e-7  # MONAI AdjustContrast's


def device_side_applies(input: str | None = "2d", views: Sequence[str] | None = None) -> bool:
    """Whether the device path serves these samples: single 2D images and slice samples (2D / 2.5D);
    not multi-view samples nor whole volumes, which keep the CPU pipeline."""
    return str(input or "2d").lower() in ("2d", "2.5d") and not views


def affine_warp(images: torch.Tensor, angle: torch.Tensor, translate: torch.Tensor,
                scale: torch.Tensor) -> torch.Tensor:
    """Each image of ``images`` (B, C, H, W) resampled through its own affine, as MONAI's ``Affine``
    resamples one image (bilinear, zeros outside, ``align_corners=False``).

    ``angle`` (B,) radians, ``translate`` (B, 2) pixels and ``scale`` (B, 2) factors along (H, W); the
    matrix is MONAI's ``rotate @ translate @ scale`` in pixel coordinates centred on the image, and
    maps an output pixel to the input pixel it samples."""
    b, _, h, w = images.shape
    cos, sin = torch.cos(angle), torch.sin(angle)
    # MONAI's (H, W) pixel-space matrix A = R @ T @ S: linear part R @ S, offset R @ t
    a00, a01 = cos * scale[:, 0], -sin * scale[:, 1]
    a10, a11 = sin * scale[:, 0], cos * scale[:, 1]
    t0 = cos * translate[:, 0] - sin * translate[:, 1]
    t1 = sin * translate[:, 0] + cos * translate[:, 1]
    # grid_sample reads (x = W, y = H) in [-1, 1] (pixel · 2 / size): the same map in those coordinates
    theta = torch.stack([torch.stack([a11, a10 * h / w, 2.0 * t1 / w], -1),
                         torch.stack([a01 * w / h, a00, 2.0 * t0 / h], -1)], 1)
    grid = F.affine_grid(theta.to(images.dtype), [b, images.shape[1], h, w], align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def adjust_contrast(images: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
    """MONAI's ``AdjustContrast`` per image: ``((x - min) / (range + 1e-7)) ** gamma * range + min``,
    min and range over the whole image (all channels); ``gamma`` is (B,)."""
    flat = images.flatten(1)
    low = flat.amin(1).view(-1, 1, 1, 1)
    span = flat.amax(1).view(-1, 1, 1, 1) - low
    return ((images - low) / (span + _EPSILON)) ** gamma.view(-1, 1, 1, 1) * span + low


def _uniform(shape: Sequence[int], low: float, high: float, generator: torch.Generator,
             device: torch.device) -> torch.Tensor:
    return torch.rand(tuple(shape), generator=generator, device=device) * (high - low) + low


class DeviceAugment:
    """Random affine, gamma (and optionally flip) of a batch (B, C, H, W) on its own device, each
    sample with its own parameters (see the module docstring for the distributions).

    Random numbers come from a ``torch.Generator`` on the batch's device seeded with ``seed``, so a run
    is repeatable; give each DDP rank its own seed."""

    def __init__(self, prob: float = AFFINE_PROB, rotate_range: float = ROTATE_RANGE,
                 scale_range: float = SCALE_RANGE, translate_range: float = TRANSLATE_RANGE,
                 contrast_prob: float = AFFINE_PROB * CONTRAST_SHARE, gamma: tuple[float, float] = GAMMA_RANGE,
                 flip_prob: float = 0.0, seed: int = 0) -> None:
        self.prob, self.rotate_range, self.scale_range = float(prob), float(rotate_range), float(scale_range)
        self.translate_range, self.contrast_prob = float(translate_range), float(contrast_prob)
        self.gamma = (float(gamma[0]), float(gamma[1]))
        self.flip_prob = float(flip_prob)
        self.seed = int(seed)
        self._generators: dict[str, torch.Generator] = {}

    def generator(self, device: torch.device) -> torch.Generator:
        """This augmentation's generator on ``device`` (made, and seeded, on first use)."""
        key = str(device)
        if key not in self._generators:
            self._generators[key] = torch.Generator(device=device).manual_seed(self.seed)
        return self._generators[key]

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """The augmented batch (a new tensor; ``images`` is not changed). Float images only."""
        if images.ndim != 4:
            raise ValueError(f"DeviceAugment takes a (B, C, H, W) batch, not shape {tuple(images.shape)}")
        if not images.is_floating_point():
            raise ValueError(f"DeviceAugment takes float images, not {images.dtype}")
        b, device = images.shape[0], images.device
        g = self.generator(device)
        # draws in a fixed order, all on the device: nothing waits for them
        do_affine = torch.rand(b, generator=g, device=device) < self.prob
        angle = _uniform((b,), -self.rotate_range, self.rotate_range, g, device)
        # one value each, for the first spatial axis, as the CPU pipeline's RandAffined draws them
        shift = _uniform((b, 1), -self.translate_range, self.translate_range, g, device)
        translate = torch.cat([shift, torch.zeros_like(shift)], 1)
        stretch = 1.0 + _uniform((b, 1), -self.scale_range, self.scale_range, g, device)
        scale = torch.cat([stretch, torch.ones_like(stretch)], 1)
        do_contrast = torch.rand(b, generator=g, device=device) < self.contrast_prob
        gamma = _uniform((b,), self.gamma[0], self.gamma[1], g, device)
        do_flip = torch.rand(b, generator=g, device=device) < self.flip_prob
        # untouched samples keep their exact values (a warp by the identity would round them)
        out = torch.where(do_affine.view(-1, 1, 1, 1), affine_warp(images, angle, translate, scale), images)
        out = torch.where(do_contrast.view(-1, 1, 1, 1), adjust_contrast(out, gamma), out)
        if self.flip_prob > 0:
            out = torch.where(do_flip.view(-1, 1, 1, 1), out.flip(2), out)
        return out


class DeviceNormalize:
    """:meth:`Preprocessing.apply` on a (B, C, H, W) batch in [0, 1], as one multiply-add per channel with
    the constants kept on the device (a new host-to-device copy per batch would wait for the device)."""

    def __init__(self, preprocessing: Preprocessing | dict, in_channels: int | None = None) -> None:
        record = preprocessing if isinstance(preprocessing, Preprocessing) else Preprocessing.from_dict(preprocessing)
        if record.intensity:
            raise ValueError(f"preprocessing {record.mode!r} normalises whole volumes ({record.intensity}): "
                             "not a 2D device-side normalisation")
        self.preprocessing = record
        self.in_channels = int(in_channels) if in_channels is not None else len(record.mean)
        target = record.for_channels(self.in_channels)
        # ((x · scale)[order] − mean) / std · post = x[order] · a + b, per network channel
        self.flip = target.channel_order == "BGR"
        self._a = [target.scale * target.post_scale / s for s in target.std]
        self._b = [-m * target.post_scale / s for m, s in zip(target.mean, target.std)]
        self._constants: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def _on(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        key = str(device)
        if key not in self._constants:
            shape = (1, self.in_channels, 1, 1)
            self._constants[key] = (torch.tensor(self._a, dtype=torch.float32).view(shape).to(device),
                                    torch.tensor(self._b, dtype=torch.float32).view(shape).to(device))
        return self._constants[key]

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """The network input for ``images`` (float, [0, 1]); a gray batch feeding a 3-channel stem is
        repeated to 3 channels first."""
        channels = images.shape[1]
        if channels == 1 and self.in_channels == 3:
            images = images.expand(-1, 3, -1, -1)
        elif channels != self.in_channels:
            raise ValueError(f"image has {channels} channels, the network takes {self.in_channels}")
        if self.flip:
            images = images.flip(1)
        a, b = self._on(images.device)
        return images.float() * a + b

