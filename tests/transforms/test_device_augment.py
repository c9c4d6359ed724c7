"""Device-side augmentation and normalisation: the same transforms as the CPU pipeline's MONAI ones (exactly, for
given parameters) and the same random distributions (statistically, on CPU)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.transforms import AdjustContrast, Affine, Compose
from scipy.stats import chi2_contingency, ks_2samp

from medxfer.models.preprocessing import CAFFE, IMAGENET, SCRATCH, TF
from medxfer.transforms.device_augment import (DeviceAugment, DeviceNormalize, adjust_contrast, affine_warp,
                                               device_side_applies)
from medxfer.transforms.pipelines import augmentations

SIZE = 64
SAMPLES = 1000
ALPHA = 0.001  # agreement: no statistic may differ at this level (6 tests: a false alarm < 1 %)
POWER = 1e-4  # a wrong range must be detected at this level


@pytest.mark.parametrize("shape", [(64, 64), (48, 80)])
@pytest.mark.parametrize("angle, translate, scale", [(0.1, (3.0, -5.0), (1.05, 0.93)), (-0.15, (-8.0, 8.0), (0.9, 1.1)),
                                                     (0.0, (0.0, 0.0), (1.0, 1.0))])
def test_the_warp_is_monais_affine(shape, angle, translate, scale):
    """For given parameters the device warp resamples as MONAI's ``Affine`` (rotate · translate · scale)."""
    image = torch.rand(2, *shape, generator=torch.Generator().manual_seed(0))
    expected = Affine(rotate_params=[angle], translate_params=list(translate), scale_params=list(scale),
                      padding_mode="zeros", mode="bilinear", image_only=True)(image)
    warped = affine_warp(image[None], torch.tensor([angle]), torch.tensor([translate]), torch.tensor([scale]))[0]
    torch.testing.assert_close(warped, torch.as_tensor(expected), atol=5e-5, rtol=0)


def test_the_gamma_is_monais_adjust_contrast():
    images = torch.rand(3, 2, 16, 16, generator=torch.Generator().manual_seed(1)) * 0.7 + 0.1
    gammas = torch.tensor([0.8, 1.0, 1.25])
    out = adjust_contrast(images, gammas)
    for i, g in enumerate(gammas.tolist()):
        torch.testing.assert_close(out[i], torch.as_tensor(AdjustContrast(g)(images[i])), atol=1e-6, rtol=0)


@pytest.mark.parametrize("record, in_channels, channels", [(IMAGENET, 3, 1), (IMAGENET, 3, 3), (IMAGENET, 1, 1),
                                                           (CAFFE, 3, 1), (TF, 3, 3), (SCRATCH, 1, 1)])
def test_device_normalisation_is_the_records(record, in_channels, channels):
    images = torch.rand(4, channels, 8, 8, generator=torch.Generator().manual_seed(2))
    expected = record.apply(images, in_channels, channel_dim=1)
    torch.testing.assert_close(DeviceNormalize(record, in_channels)(images), expected, atol=1e-5, rtol=1e-5)


def _test_image() -> torch.Tensor:
    """An ellipse (long axis along the first spatial axis) on black, its intensity a ramp from 0.2 to 1 along the
    second: its centroid moves with the translation, its axis turns with the rotation, its area follows the
    scale, and where the geometry is untouched each pixel's value tells the gamma (``x ** gamma``)."""
    y, x = torch.meshgrid(torch.arange(SIZE, dtype=torch.float32), torch.arange(SIZE, dtype=torch.float32),
                          indexing="ij")
    c = (SIZE - 1) / 2
    inside = ((y - c) / 16) ** 2 + ((x - c) / 7) ** 2 <= 1
    ramp = 0.2 + 0.8 * (x - (c - 7)) / 14
    return torch.where(inside, ramp.clamp(0.2, 1.0), torch.zeros(())).reshape(1, SIZE, SIZE)


def _statistics(images: torch.Tensor) -> dict[str, np.ndarray]:
    """Per image: whether the affine moved the ellipse, and then its centroid along the first axis, its
    principal-axis angle and area; whether an untouched image got a gamma, and then the gamma itself."""
    original = _test_image()[0]
    images = images[:, 0]
    mask = images > 0.05  # a gamma keeps the ellipse (values >= 0.2 ** 1.25) above this
    moved = (mask != (original > 0.05)).flatten(1).any(1)
    weights = mask.float()
    y, x = torch.meshgrid(torch.arange(SIZE, dtype=torch.float32), torch.arange(SIZE, dtype=torch.float32),
                          indexing="ij")
    area = weights.sum((1, 2))
    cy, cx = (weights * y).sum((1, 2)) / area, (weights * x).sum((1, 2)) / area
    dy, dx = y - cy.view(-1, 1, 1), x - cx.view(-1, 1, 1)
    myy, mxx, mxy = ((weights * dy * dy).sum((1, 2)), (weights * dx * dx).sum((1, 2)),
                     (weights * dy * dx).sum((1, 2)))
    ramp = (original > 0.25) & (original < 0.95)  # min 0 and max 1: the gamma acts as x ** gamma
    gamma = (torch.log(images[:, ramp]) / torch.log(original[ramp])).median(1).values
    gamma[moved] = float("nan")
    return {"moved": moved.numpy(), "centroid": cy.numpy(), "angle": (0.5 * torch.atan2(2 * mxy, myy - mxx)).numpy(),
            "area": area.numpy(), "gamma": gamma.numpy()}


def _cpu_path(seed: int = 0) -> torch.Tensor:
    """The bundle's CPU augmentation (MONAI transforms, one sample at a time) on the test image, SAMPLES times."""
    pipeline = Compose(augmentations(image_size=SIZE))
    pipeline.set_random_state(seed)
    image = _test_image()
    return torch.stack([torch.as_tensor(pipeline({"image": image.clone()})["image"]) for _ in range(SAMPLES)])


def _device_path(**ranges) -> torch.Tensor:
    augment = DeviceAugment(seed=123, **ranges)
    return augment(_test_image()[None].expand(SAMPLES, -1, -1, -1).contiguous())


@pytest.fixture(scope="module")
def cpu_statistics():
    return _statistics(_cpu_path())


def _rate(cpu: np.ndarray, device: np.ndarray) -> float:
    """Chi-square p-value: does an event happen as often on both paths?"""
    return chi2_contingency([[int(cpu.sum()), int((~cpu).sum())], [int(device.sum()), int((~device).sum())]])[1]


def _agreement(cpu: dict, device: dict) -> dict[str, float]:
    """p-values: how often the affine and the gamma happen (chi-square); the distributions of the centroid shift,
    rotation and area of the moved images, and of the gamma of the untouched ones (Kolmogorov–Smirnov)."""
    out = {"moved": _rate(cpu["moved"], device["moved"])}
    out.update({name: ks_2samp(cpu[name][cpu["moved"]], device[name][device["moved"]]).pvalue
                for name in ("centroid", "angle", "area")})
    cpu_gamma, device_gamma = cpu["gamma"][~cpu["moved"]], device["gamma"][~device["moved"]]
    cpu_changed, device_changed = np.abs(cpu_gamma - 1) > 1e-4, np.abs(device_gamma - 1) > 1e-4
    out["gamma_rate"] = _rate(cpu_changed, device_changed)
    out["gamma"] = ks_2samp(cpu_gamma[cpu_changed], device_gamma[device_changed]).pvalue
    return out


def test_device_and_cpu_augmentation_draw_from_the_same_distributions(cpu_statistics):
    device = _statistics(_device_path())
    p = _agreement(cpu_statistics, device)
    assert min(p.values()) > ALPHA, p
    assert 0.45 < device["moved"].mean() < 0.55  # the affine's probability, 0.5
    gamma = device["gamma"][~device["moved"]]
    changed = gamma[np.abs(gamma - 1) > 1e-4]
    # the gamma's probability, 0.3, and its range, U(0.8, 1.25)
    assert 0.25 < changed.size / gamma.size < 0.35 and 0.8 <= changed.min() and changed.max() <= 1.25


@pytest.mark.parametrize("wrong, statistic", [({"rotate_range": 0.3}, "angle"),
                                              ({"translate_range": 16.0}, "centroid"),
                                              ({"scale_range": 0.2}, "area"),
                                              ({"gamma": (0.64, 1.5625)}, "gamma"),
                                              ({"contrast_prob": 0.45}, "gamma_rate"),
                                              ({"prob": 0.6}, "moved")])
def test_the_comparison_detects_a_wrong_distribution(cpu_statistics, wrong, statistic):
    """The agreement test has the power to fail: a doubled range (or a wrong probability) is detected."""
    p = _agreement(cpu_statistics, _statistics(_device_path(**wrong)))
    assert p[statistic] < POWER, p


def test_untouched_samples_keep_their_values_and_a_seed_repeats_a_run():
    images = torch.rand(64, 1, 16, 16, generator=torch.Generator().manual_seed(3))
    out = DeviceAugment(seed=5)(images)
    same = (out == images).flatten(1).all(1)
    assert 0 < int(same.sum()) < 64  # some samples drew neither the affine nor the gamma: exactly as they were
    assert torch.equal(DeviceAugment(seed=5)(images), out)
    assert not torch.equal(DeviceAugment(seed=6)(images), out)
    flipped = DeviceAugment(prob=0.0, contrast_prob=0.0, flip_prob=1.0)(images)
    assert torch.equal(flipped, images.flip(2))


def test_only_single_2d_images_go_to_the_device():
    assert device_side_applies("2d") and device_side_applies("2.5D") and device_side_applies(None)
    assert not device_side_applies("3d") and not device_side_applies("2d", views=["CC", "MLO"])
