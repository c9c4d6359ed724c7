"""Slices of cached volumes and cines: the right slices, read without decoding the whole volume,
scaled per volume, colour frames as three channels."""
from __future__ import annotations

import math
import tracemalloc

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import DataLoader, Dataset

from medxfer.transforms import volumes
from medxfer.transforms.pipelines import deterministic_transforms
from medxfer.transforms.presets import LoadItemd, ModalityPresetd
from medxfer.transforms.volumes import read_slices, volume_percentiles


def marker_volume(path, shape=(12, 10, 7), dtype=np.int16):
    """A volume whose slice k holds the value 100·k + 7 everywhere, and one voxel per slice that
    tells rows from columns (value −k at (1, 0))."""
    vol = np.zeros(shape, dtype=dtype) + (100 * np.arange(shape[2]) + 7).astype(dtype)
    vol[1, 0, :] = -np.arange(shape[2])
    nib.save(nib.Nifti1Image(vol, np.eye(4)), str(path))
    return path, vol


def sample(path, indices, modality="OT", channels=1, **kw):
    """A slice sample as load_cohort makes it (the fields the transforms read)."""
    return {"image": str(path), "image_path": str(path), "slice_indices": list(indices), "modality": modality,
            "channels": channels, "window_center": math.nan, "window_width": math.nan, **kw}


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_read_slices_returns_the_named_slices_in_the_order_asked(tmp_path, suffix):
    path, vol = marker_volume(tmp_path / f"v{suffix}")
    got = read_slices(path, [0, 0, 1])  # the 2.5D slab of slice 0: the end slice repeated
    assert got.shape == (12, 10, 3) and got.dtype == np.float32
    assert got[5, 5].tolist() == [7, 7, 107] and got[1, 0].tolist() == [0, 0, -1]
    got = read_slices(path, [6, 5, 3])
    assert got[5, 5].tolist() == [607, 507, 307]
    assert np.array_equal(got[..., 2], vol[:, :, 3].astype(np.float32))
    assert read_slices(path, [4]).shape == (12, 10, 1)


def test_read_slices_says_which_file_and_slices_are_wrong(tmp_path):
    path, _ = marker_volume(tmp_path / "v.nii")
    with pytest.raises(ValueError, match=r"v\.nii: slices \[5, 7\] outside 0\.\.6"):
        read_slices(path, [5, 7])
    with pytest.raises(ValueError, match="outside"):
        read_slices(path, [-1, 0, 1])
    flat = tmp_path / "flat.nii"
    nib.save(nib.Nifti1Image(np.zeros((8, 9), np.uint8), np.eye(4)), str(flat))
    with pytest.raises(ValueError, match=r"flat\.nii: a \(8, 9\) image has no slice axis"):
        read_slices(flat, [0])


def _rss_file_kb() -> int | None:
    """File-backed resident memory of this process (kB; Linux), None where /proc does not say."""
    try:
        for line in open("/proc/self/status"):
            if line.startswith("RssFile:"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def test_an_uncompressed_volume_is_read_slice_by_slice_never_whole(tmp_path, monkeypatch):
    """A 300-slice volume: reading 2.5D slabs opens the file once, never decodes the whole array
    (nibabel's whole-array reads refuse), allocates memory for the slices read, not for the volume,
    and brings only those slices' pages of the file into memory."""
    path, _ = marker_volume(tmp_path / "ct.nii", shape=(128, 128, 300))
    whole_bytes = 128 * 128 * 300 * 4  # the volume as float32: 19.7 MB
    file_kb = path.stat().st_size / 1024  # 9.8 MB of int16
    loads = []
    real_load = nib.load

    def counting_load(*a, **kw):
        loads.append(a[0])
        return real_load(*a, **kw)

    def refuse_whole(self, *a, **kw):
        raise AssertionError("the whole volume was read")

    monkeypatch.setattr(nib, "load", counting_load)
    monkeypatch.setattr(nib.arrayproxy.ArrayProxy, "__array__", refuse_whole)
    monkeypatch.setattr(nib.arrayproxy.ArrayProxy, "get_unscaled", refuse_whole)
    monkeypatch.setattr(nib.arrayproxy.ArrayProxy, "get_fdata", refuse_whole, raising=False)
    rss0 = _rss_file_kb()
    tracemalloc.start()
    try:
        for k in (0, 150, 299):
            got = read_slices(path, [max(k - 1, 0), k, min(k + 1, 299)])
            assert got[64, 64, 1] == 100 * k + 7 and got[1, 0, 1] == -k
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    rss1 = _rss_file_kb()
    assert len(loads) == 1  # one open file per volume, reused for every slice
    assert peak < whole_bytes / 10, \
        f"{peak / 1e6:.1f} MB allocated to read 9 slices of a {whole_bytes / 1e6:.0f} MB volume"
    if rss0 is not None and rss1 is not None:  # 9 slices are 0.3 MB of the file
        assert rss1 - rss0 < file_kb / 4, f"{rss1 - rss0} kB of a {file_kb:.0f} kB file brought in for 9 slices"


def test_a_scaled_volume_is_read_with_its_scaling(tmp_path):
    """A NIfTI with a slope and intercept (not what ingest writes, but a valid cache file): its
    slices carry the scaled values."""
    vol = (np.arange(6 * 5 * 4, dtype=np.int16).reshape(6, 5, 4))
    img = nib.Nifti1Image(vol, np.eye(4))
    img.header.set_slope_inter(2.0, -10.0)
    nib.save(img, str(tmp_path / "scaled.nii"))
    got = read_slices(tmp_path / "scaled.nii", [3, 1])
    assert np.array_equal(got, vol[:, :, [3, 1]].astype(np.float32) * 2 - 10)
    assert volume_percentiles(tmp_path / "scaled.nii", 0.0, 100.0) == (-10.0, 2 * vol.max() - 10.0)


def test_slices_are_slice_first_so_the_2_5d_tensor_needs_no_copy(tmp_path):
    """read_slices' (X, Y, S) result moved to (S, X, Y) is C-contiguous, and LoadItemd's 2.5D image
    is a contiguous float32 tensor (the resize and normalisation then read memory in order)."""
    path, vol = marker_volume(tmp_path / "v.nii", shape=(20, 16, 9))
    got = read_slices(path, [3, 4, 5])
    first = np.moveaxis(got, 2, 0)
    assert first.flags["C_CONTIGUOUS"] and np.array_equal(first, np.moveaxis(vol[:, :, 3:6], 2, 0))
    image = LoadItemd("image", in_channels=3)(sample(path, [3, 4, 5], modality="CT"))["image"]
    assert tuple(image.shape) == (3, 20, 16) and image.dtype == torch.float32 and image.is_contiguous()
    assert np.array_equal(image.numpy(), first)


def test_forked_workers_read_the_right_slices_from_one_open_file(tmp_path):
    """The parent process opens the volume, then DataLoader workers forked from it read its slices in
    parallel: every sample gets its own slices (no shared file position between processes)."""
    path, _ = marker_volume(tmp_path / "v.nii", shape=(64, 64, 40))
    assert read_slices(path, [0])[5, 5, 0] == 7  # opened (and cached) in the parent before the fork
    samples = [sample(path, [max(k - 1, 0), k, min(k + 1, 39)], modality="CT") for k in range(40)]
    dl = DataLoader(Dataset(samples, LoadItemd("image", in_channels=3)), batch_size=4, num_workers=2,
                    multiprocessing_context="fork")
    got = torch.cat([b["image"][:, 1, 5, 5] for b in dl]).tolist()
    assert got == [100 * k + 7 for k in range(40)]


def test_a_compressed_volume_is_decoded_once_not_once_per_slice(tmp_path, monkeypatch):
    path, _ = marker_volume(tmp_path / "mr.nii.gz")
    loads = []
    real_load = nib.load
    monkeypatch.setattr(nib, "load", lambda *a, **kw: loads.append(a[0]) or real_load(*a, **kw))
    assert [read_slices(path, [k])[5, 5, 0] for k in range(7)] == [100 * k + 7 for k in range(7)]
    volume_percentiles(path, 1.0, 99.0)
    assert len(loads) == 1


def test_a_rewritten_file_is_read_again(tmp_path):
    """The open proxy is keyed by the file's size and time: a re-ingest that rewrites it is seen."""
    path, _ = marker_volume(tmp_path / "v.nii")
    assert read_slices(path, [2])[5, 5, 0] == 207
    vol = np.full((12, 10, 9), 5, np.int16)
    nib.save(nib.Nifti1Image(vol, np.eye(4)), str(path))
    assert read_slices(path, [8])[5, 5, 0] == 5


def test_volume_percentiles_are_those_of_the_whole_volume(tmp_path):
    rng = np.random.default_rng(0)
    vol = rng.normal(300, 80, (20, 20, 10)).astype(np.float32)
    path = tmp_path / "mr.nii"
    nib.save(nib.Nifti1Image(vol, np.eye(4)), str(path))
    lo, hi = volume_percentiles(path, 1.0, 99.0)
    assert (lo, hi) == pytest.approx(tuple(np.percentile(vol, [1, 99])), rel=1e-5)
    assert volume_percentiles(path, 0.0, 100.0) == pytest.approx((vol.min(), vol.max()))


def test_two_slices_of_one_mr_volume_share_one_scale(tmp_path):
    """A dim slice and a bright slice of one MR volume: scaled by the volume's percentiles, the dim
    slice stays dim and a voxel value means the same in both. Each slice's own percentiles would
    stretch both to [0, 1]."""
    rng = np.random.default_rng(1)
    vol = np.zeros((16, 16, 6), np.float32)
    for k in range(6):
        vol[:, :, k] = rng.uniform(0, 100 * (k + 1), (16, 16))
    vol[3, 3, :] = 50.0  # one value present in every slice
    path = tmp_path / "mr.nii"
    nib.save(nib.Nifti1Image(vol, np.eye(4)), str(path))
    load, preset = LoadItemd("image", in_channels=1), ModalityPresetd("image")
    dim, bright = (preset(load(sample(path, [k], modality="MR")))["image"][0].numpy() for k in (0, 5))
    lo, hi = np.percentile(vol, [1, 99])
    assert dim[3, 3] == pytest.approx(bright[3, 3]) == pytest.approx((50 - lo) / (hi - lo), rel=1e-4)
    assert dim.max() < 0.2 < 0.9 < bright.max()
    own = np.percentile(vol[:, :, 0], [1, 99])
    assert (own[1] - own[0]) < (hi - lo) / 5  # a per-slice scale would have been very different


def test_an_8_bit_looking_slice_of_a_wide_range_volume_is_scaled_with_its_volume(tmp_path):
    """OT volumes: the 8-bit test and the min–max scale look at the whole volume."""
    vol = np.zeros((8, 8, 3), np.int16)
    vol[:, :, 0] = 200  # alone, this slice would look like an 8-bit image and be divided by 255
    vol[:, :, 2] = 1000
    path = tmp_path / "ot.nii"
    nib.save(nib.Nifti1Image(vol, np.eye(4)), str(path))
    out = ModalityPresetd("image")(LoadItemd("image", in_channels=1)(sample(path, [0])))["image"]
    assert out.numpy().max() == pytest.approx(0.2)


def test_a_2_5d_slab_is_three_channels_in_slice_order(tmp_path):
    path, _ = marker_volume(tmp_path / "v.nii")
    steps = deterministic_transforms(image_size=16, in_channels=3)
    out = sample(path, [2, 3, 4], modality="CT")
    for t in steps[:1]:
        out = t(out)
    assert tuple(out["image"].shape) == (3, 12, 10)
    assert out["image"][:, 5, 5].tolist() == [207, 307, 407]
    for t in steps[1:]:
        out = t(out)
    assert tuple(out["image"].shape) == (3, 16, 16)


def colour_cine(path, frames=5):
    """A colour cine as ingest caches it: (x, y, frame, RGB) uint8; frame f is pure red, green or
    blue by f % 3 at level 50·(f + 1)."""
    arr = np.zeros((10, 8, frames, 3), np.uint8)
    for f in range(frames):
        arr[:, :, f, f % 3] = 50 * (f + 1)
    nib.save(nib.Nifti1Image(arr, np.eye(4)), str(path))
    return arr


def test_a_colour_cine_frame_is_three_channels_and_a_2_5d_slab_three_luminances(tmp_path):
    path = tmp_path / "cine.nii"
    colour_cine(path)
    assert read_slices(path, [1, 3]).shape == (10, 8, 2, 3)
    frame = LoadItemd("image", in_channels=3)(sample(path, [4], modality="US", channels=3))["image"]
    assert tuple(frame.shape) == (3, 10, 8) and frame[:, 4, 4].tolist() == [0, 250, 0]  # frame 4: green
    gray = LoadItemd("image", in_channels=1)(sample(path, [4], modality="US", channels=3))["image"]
    assert tuple(gray.shape) == (1, 10, 8) and gray[0, 4, 4].item() == pytest.approx(0.587 * 250)
    slab = LoadItemd("image", in_channels=3)(sample(path, [0, 1, 2], modality="US", channels=3))["image"]
    assert tuple(slab.shape) == (3, 10, 8)
    assert slab[:, 4, 4].tolist() == pytest.approx([0.299 * 50, 0.587 * 100, 0.114 * 150])
    scaled = ModalityPresetd("image")(LoadItemd("image", in_channels=3)(
        sample(path, [4], modality="US", channels=3)))["image"]
    assert scaled[:, 4, 4].tolist() == pytest.approx([0.0, 250 / 255, 0.0])  # US: the display scale


def test_a_whole_2d_item_in_a_sliced_cohort_is_loaded_as_before(tmp_path):
    path = tmp_path / "xr.nii"
    nib.save(nib.Nifti1Image(np.arange(80, dtype=np.int16).reshape(10, 8), np.eye(4)), str(path))
    whole = LoadItemd("image", in_channels=3)(sample(path, [-1, -1, -1], modality="DX"))["image"]
    plain = LoadItemd("image", in_channels=3)({"image": str(path), "channels": 1})["image"]
    assert tuple(whole.shape) == tuple(plain.shape) == (1, 10, 8)
    assert np.array_equal(whole.numpy(), plain.numpy())


def test_the_proxy_cache_is_bounded():
    assert volumes._proxy.cache_info().maxsize and volumes._decoded.cache_info().maxsize <= 2
