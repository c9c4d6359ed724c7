"""Weights-bound preprocessing: the numbers each pretraining expects, as a MONAI transform."""
from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged, ScaleIntensityd

from medxfer.models.preprocessing import CAFFE, CAFFE_KERAS, IMAGENET, TF, Preprocessing, preset
from medxfer.transforms import WeightsNormalize, WeightsNormalized


def _rgb(r, g, b):
    return torch.tensor([r, g, b], dtype=torch.float32).reshape(3, 1, 1)


def test_caffe_radimagenet_order_bgr_minus_means_then_divided_by_255():
    out = CAFFE.apply(_rgb(1.0, 0.5, 0.0), 3)
    # 0-255, RGB->BGR, minus [103.939, 116.779, 123.68], x 1/255
    expected = [(0 - 103.939) / 255, (127.5 - 116.779) / 255, (255 - 123.68) / 255]
    assert out.flatten().tolist() == pytest.approx(expected, abs=1e-6)
    keras_imagenet = CAFFE_KERAS.apply(_rgb(1.0, 0.5, 0.0), 3)
    assert keras_imagenet.flatten().tolist() == pytest.approx([-103.939, 10.721, 131.32], abs=1e-3)


def test_imagenet_and_tf_modes():
    out = IMAGENET.apply(_rgb(0.485, 0.456 + 0.224, 0.0), 3).flatten().tolist()
    assert out == pytest.approx([0.0, 1.0, -0.406 / 0.225], abs=1e-6)
    assert TF.apply(_rgb(0.0, 0.5, 1.0), 3).flatten().tolist() == pytest.approx([-1.0, 0.0, 1.0])


def test_gray_is_repeated_for_a_rgb_stem_and_collapsed_for_a_summed_stem():
    gray = torch.full((1, 2, 2), 0.5)
    rgb = IMAGENET.apply(gray, in_channels=3)
    assert rgb.shape == (3, 2, 2)
    assert rgb[:, 0, 0].tolist() == pytest.approx(IMAGENET.apply(_rgb(0.5, 0.5, 0.5), 3).flatten().tolist())
    one = IMAGENET.apply(gray, in_channels=1)
    assert one.shape == (1, 2, 2)
    assert float(one[0, 0, 0]) == pytest.approx((0.5 - np.mean(IMAGENET.mean)) / np.mean(IMAGENET.std))
    with pytest.raises(ValueError, match="3-channel image cannot feed a 1-channel stem"):
        IMAGENET.apply(torch.zeros(3, 2, 2), in_channels=1)


def test_record_round_trips_and_names_mlflow_params():
    assert Preprocessing.from_dict(json.loads(json.dumps(CAFFE.to_dict()))) == CAFFE
    params = CAFFE.params()
    assert params["preprocessing.mode"] == "caffe" and params["preprocessing.channel_order"] == "BGR"
    with pytest.raises(ValueError, match="known: caffe, caffe-keras, imagenet, medicalnet, scratch, swin-ssl, tf"):
        preset("inception")


def test_dictionary_transform_in_a_monai_pipeline_keeps_metadata(tmp_path):
    data = np.linspace(0, 1000, 64 * 48, dtype=np.float32).reshape(64, 48)
    nib.save(nib.Nifti1Image(data, np.diag([0.5, 0.25, 1, 1])), tmp_path / "img.nii")
    pipeline = Compose([LoadImaged("image"), EnsureChannelFirstd("image"), ScaleIntensityd("image"),
                        WeightsNormalized("image", TF, in_channels=3)])
    out = pipeline({"image": str(tmp_path / "img.nii")})["image"]
    assert isinstance(out, MetaTensor) and out.shape == (3, 64, 48)
    assert float(out.min()) == pytest.approx(-1) and float(out.max()) == pytest.approx(1)
    assert out.pixdim[:2].tolist() == pytest.approx([0.5, 0.25])
    assert torch.equal(WeightsNormalize(TF.to_dict(), 3)(torch.zeros(1, 2, 2)), torch.full((3, 2, 2), -1.0))


def test_transform_defaults_to_the_stem_its_record_describes():
    """A 1-channel (summed-stem) record feeds 1 channel; an RGB record repeats gray to 3."""
    assert WeightsNormalize(IMAGENET.for_channels(1))(torch.zeros(1, 4, 4)).shape == (1, 4, 4)
    assert WeightsNormalize(IMAGENET)(torch.zeros(1, 4, 4)).shape == (3, 4, 4)


def test_batches_need_their_channel_axis_named():
    batch = torch.rand(4, 1, 8, 8)
    assert IMAGENET.apply(batch, 3, channel_dim=1).shape == (4, 3, 8, 8)
    with pytest.raises(ValueError, match="channel_dim 3 does not fit"):
        IMAGENET.apply(batch, 3, channel_dim=3)
