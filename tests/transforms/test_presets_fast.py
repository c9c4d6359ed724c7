"""The direct tensor paths of the presets (CT window, resize-with-pad, weights normalisation) give the
values MONAI's transforms and the numpy preset gave, bit for bit, and keep the metadata later steps use."""
from __future__ import annotations

import math

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import Resize, SpatialPad

from medxfer.models.preprocessing import CAFFE, IMAGENET
from medxfer.transforms import WeightsNormalize, WeightsNormalized
from medxfer.transforms.pipelines import classification_transforms
from medxfer.transforms.presets import LoadItemd, ModalityPresetd, ResizeWithPadd, _window_scale


def reference_resize_pad(img, size: int, mode: str):
    """What ResizeWithPadd computed with MONAI's transforms."""
    resized = Resize(spatial_size=size, size_mode="longest", mode=mode, anti_aliasing=False)(img)
    return SpatialPad(spatial_size=(size, size), method="symmetric")(resized)


def meta_image(shape, seed=0, mask=False, dtype=np.float32):
    """A channel-first MetaTensor as LoadItemd makes it: a NIfTI-like affine, pixdim and file name."""
    rng = np.random.default_rng(seed)
    arr = (rng.random(shape) > 0.7) if mask else rng.normal(100, 40, shape)
    affine = torch.tensor([[0.1, 0, 0, -12.5], [0, 0.12, 0, 30.0], [0, 0, 1.0, 4.0], [0, 0, 0, 1]], dtype=torch.float64)
    meta = {"filename_or_obj": "/cache/images/ab/abcdef.nii", "affine": affine,
            "pixdim": np.array([1.0, 0.1, 0.12, 1.0, 1, 1, 1, 1], np.float32), "spatial_shape": np.array(shape[1:])}
    return MetaTensor(torch.from_numpy(arr.astype(dtype)), meta=meta)


SHAPES = [
    (1, 300, 600),   # a dental panoramic, 2:1
    (1, 601, 1203),  # 2:1, odd sizes that do not divide the network size
    (3, 480, 640),   # an ultrasound frame in colour, 4:3
    (3, 256, 256),   # a square 2.5D slab: no padding
    (1, 1000, 333),  # portrait (a cephalogram on its side)
    (1, 97, 61),     # smaller than the network: upsampled
    (3, 224, 224),   # already the network size
    (1, 223, 224),   # one row short: one row of padding
    (1, 5, 900),     # extreme aspect: the short side rounds to 1
]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("size", [224, 128])
def test_resize_with_pad_matches_monai_resize_and_spatial_pad(shape, size):
    """Images (area) and masks (nearest), grey and RGB, any aspect: the same values, shape, affine and
    pixdim as MONAI's Resize(size_mode="longest") + SpatialPad(method="symmetric")."""
    image, mask = meta_image(shape, seed=1), meta_image((1, *shape[1:]), seed=2, mask=True)
    got = ResizeWithPadd(["image", "label"], size, ["area", "nearest"])({"image": image, "label": mask, "id": 7})
    assert got["id"] == 7
    # the input's meta is left alone (MONAI's Resize writes the new spacing into the input's pixdim array)
    assert np.array_equal(image.meta["pixdim"][:3], np.float32([1.0, 0.1, 0.12]))
    for key, src, mode in (("image", image, "area"), ("label", mask, "nearest")):
        ref, out = reference_resize_pad(src, size, mode), got[key]
        assert isinstance(out, MetaTensor) and out.dtype == torch.float32
        assert tuple(out.shape) == tuple(ref.shape) == (src.shape[0], size, size)
        assert torch.equal(out.as_tensor(), ref.as_tensor()), f"{key}: max difference {(out - ref).abs().max()}"
        assert torch.allclose(out.affine, ref.affine, rtol=0, atol=1e-9), (out.affine, ref.affine)
        assert np.allclose(out.meta["pixdim"], ref.meta["pixdim"])
        assert out.meta["filename_or_obj"] == "/cache/images/ab/abcdef.nii"
    assert set(got["label"].unique().tolist()) <= {0.0, 1.0}  # nearest: a mask stays binary


def test_resize_with_pad_leaves_its_input_alone_and_accepts_plain_arrays():
    image = meta_image((3, 224, 224))
    before = image.clone()
    out = ResizeWithPadd("image", 224)({"image": image})["image"]
    out += 1  # the output is a new tensor, as MONAI's
    assert torch.equal(image.as_tensor(), before.as_tensor())
    for plain in (np.arange(2 * 50 * 30, dtype=np.int16).reshape(2, 50, 30), torch.rand(1, 90, 40)):
        got = ResizeWithPadd("image", 64)({"image": plain})["image"]
        ref = reference_resize_pad(plain, 64, "area")
        assert torch.equal(got.as_tensor(), ref.as_tensor()) and torch.allclose(got.affine, ref.affine)


def test_resize_with_pad_takes_the_direct_path(monkeypatch):
    """A 2D image does not go through MONAI's Resize and SpatialPad (their per-call metadata machinery
    cost more than the pooling itself)."""
    def refuse(*a, **kw):
        raise AssertionError("MONAI Resize/SpatialPad called")

    monkeypatch.setattr(Resize, "__call__", refuse)
    monkeypatch.setattr(SpatialPad, "__call__", refuse)
    out = ResizeWithPadd(["image", "label"], 64, ["area", "nearest"])(
        {"image": meta_image((3, 100, 50)), "label": meta_image((1, 100, 50), mask=True)})
    assert tuple(out["image"].shape) == (3, 64, 64) and tuple(out["label"].shape) == (1, 64, 64)


def test_other_modes_give_monai_values_too():
    img = meta_image((1, 40, 30))
    got = ResizeWithPadd("image", 32, mode="bilinear")({"image": img})["image"]
    assert torch.equal(got.as_tensor(), reference_resize_pad(img, 32, "bilinear").as_tensor())


@pytest.mark.parametrize("window", [(40.0, 400.0), (-600.0, 1500.0), (300.0, 1.0)])
def test_the_ct_window_on_the_tensor_equals_the_numpy_window(window):
    """Every int16 HU value from −1024 to 3071 and fractional values: the tensor window gives exactly
    the numpy window's float32 values; the input tensor and its meta are kept."""
    hu = np.concatenate([np.arange(-1024, 3072, dtype=np.float32), np.linspace(-200.3, 300.7, 4096, dtype=np.float32)])
    img = MetaTensor(torch.from_numpy(hu.reshape(1, 64, 128).copy()),
                     meta={"filename_or_obj": "/cache/x.nii", "affine": torch.eye(4, dtype=torch.float64)})
    before = img.clone()
    out = ModalityPresetd("image", ct_window=window)({"image": img, "modality": "CT"})["image"]
    expected = _window_scale(hu.reshape(1, 64, 128), *window).astype(np.float32)
    assert isinstance(out, MetaTensor) and out.dtype == torch.float32
    assert np.array_equal(out.numpy(), expected)
    assert out.meta["filename_or_obj"] == "/cache/x.nii"
    assert torch.equal(img.as_tensor(), before.as_tensor())  # not modified in place
    ints = ModalityPresetd("image", ct_window=window)({"image": np.int16(hu[:4096]).reshape(1, 64, 64),
                                                       "modality": "ct"})["image"]
    assert np.array_equal(ints.numpy(), _window_scale(np.float32(np.int16(hu[:4096])).reshape(1, 64, 64), *window))


@pytest.mark.parametrize("record, channels", [(IMAGENET, 1), (IMAGENET, 3), (CAFFE, 3)])
def test_weights_normalize_on_the_plain_tensor_keeps_values_and_meta(record, channels):
    img = MetaTensor(torch.rand(channels, 20, 30), meta={"filename_or_obj": "/cache/x.nii"})
    img.applied_operations = [{"class": "Resize"}]
    out = WeightsNormalized("image", record, 3)({"image": img})["image"]
    assert isinstance(out, MetaTensor) and type(out.as_tensor()) is torch.Tensor
    assert torch.equal(out.as_tensor(), record.apply(img.as_tensor().clone(), 3))
    assert out.meta["filename_or_obj"] == "/cache/x.nii" and out.applied_operations == [{"class": "Resize"}]
    plain = WeightsNormalize(record, 3)(img.as_tensor())
    assert type(plain) is torch.Tensor and torch.equal(plain, out.as_tensor())


def test_a_2d_panoramic_and_a_2_5d_ct_slab_through_the_pipeline_equal_the_monai_reference(tmp_path):
    """Whole pipelines (augmentation off): load, preset, resize-with-pad, normalisation — against the
    same steps written with numpy and MONAI's Resize + SpatialPad."""
    rng = np.random.default_rng(3)
    pano = rng.integers(0, 4096, (701, 351)).astype(np.uint16)  # NIfTI x is the long side
    nib.save(nib.Nifti1Image(pano, np.eye(4)), str(tmp_path / "px.nii"))
    vol = rng.integers(-1024, 2000, (130, 130, 5)).astype(np.int16)
    nib.save(nib.Nifti1Image(vol, np.eye(4)), str(tmp_path / "ct.nii"))
    items = [{"image": str(tmp_path / "px.nii"), "image_path": str(tmp_path / "px.nii"), "modality": "PX",
              "channels": 1, "window_center": 2000.0, "window_width": 3000.0, "label": 1},
             {"image": str(tmp_path / "ct.nii"), "image_path": str(tmp_path / "ct.nii"), "modality": "CT",
              "channels": 1, "window_center": math.nan, "window_width": math.nan, "slice_indices": [1, 2, 3],
              "label": 0}]
    pipeline = classification_transforms(96, 3, IMAGENET, augment=False)
    for item in items:
        got = pipeline(dict(item))["image"]
        loaded = LoadItemd("image", in_channels=3)(dict(item))["image"]
        center, width = (item["window_center"], item["window_width"]) if item["modality"] != "CT" else (40.0, 400.0)
        scaled = MetaTensor(torch.from_numpy(_window_scale(loaded.numpy(), center, width).astype(np.float32)))
        expected = IMAGENET.apply(reference_resize_pad(scaled, 96, "area").as_tensor(), 3)
        assert tuple(got.shape) == (3, 96, 96)
        assert torch.equal(got, expected), f"{item['modality']}: max difference {(got - expected).abs().max()}"


def test_each_step_returns_its_own_meta_not_its_inputs():
    """The cheap MetaTensor wrapping copies the meta dict and operation list: a later step that edits
    its image's meta (MONAI's random affine updates the affine) leaves the earlier images' meta alone."""
    img = meta_image((3, 40, 40))
    img.applied_operations = [{"class": "Load"}]
    outs = [ModalityPresetd("image")({"image": img, "modality": "CT"})["image"],
            ModalityPresetd("image")({"image": img, "modality": "MR"})["image"],
            ResizeWithPadd("image", 32)({"image": img})["image"],
            WeightsNormalize(IMAGENET, 3)(img)]
    for out in outs:
        assert isinstance(out, MetaTensor) and type(out.as_tensor()) is torch.Tensor
        assert out.meta is not img.meta and out.applied_operations is not img.applied_operations
        assert out.meta["filename_or_obj"] == img.meta["filename_or_obj"]
        assert out.applied_operations == [{"class": "Load"}]
        out.meta["filename_or_obj"] = "changed"
        out.applied_operations.append({"class": "Later"})
    assert img.meta["filename_or_obj"] == "/cache/images/ab/abcdef.nii"
    assert img.applied_operations == [{"class": "Load"}]
    assert outs[0].spatial_ndim == img.spatial_ndim == 2
