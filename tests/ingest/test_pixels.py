"""Pixel decoding and presentation: the values a user finds in the cached images."""
from __future__ import annotations

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.uid import DigitalXRayImageStorageForPresentation, MRImageStorage

from medxfer.core.errors import MedxferError
from medxfer.ingest import ingest, pixels
from medxfer.ingest.deid import Pseudonymizer
from medxfer.ingest.manifest import read_manifest
from medxfer.ingest.scan.sniff import read_file_record

from .dicom_builders import AXIAL, image_dataset, write_image

PSEUDO = Pseudonymizer(b"unit-test-secret-0123456789abcdef")


def _header(path: Path) -> dict:
    rec = read_file_record(path.parent, path.name, PSEUDO)
    assert rec.kind == "dicom", rec.reason
    return rec.header


def _presented(path: Path) -> tuple[np.ndarray, pixels.Presentation]:
    h = _header(path)
    p = pixels.plan_presentation([h])
    return pixels.present(pixels.read_stored(path, h), p, h), p


STORED = np.array([[100, 200], [300, 400]], dtype=np.uint16)  # a narrow part of the 12-bit range


def test_monochrome1_is_inverted_over_the_range_the_header_defines(tmp_path):
    path = write_image(tmp_path / "m1.dcm", STORED, modality="CR", photometric="MONOCHROME1", bits_stored=12)
    out, p = _presented(path)
    assert p.invert and (p.lo, p.hi) == (0, 4095)
    np.testing.assert_array_equal(out, 4095 - STORED.astype(np.int64))  # not the image's own min/max (500 - v)
    assert out.dtype == np.int16


def test_rescale_gives_hounsfield_units_in_an_integer_type(tmp_path):
    path = write_image(tmp_path / "ct.dcm", STORED, bits_stored=12, RescaleSlope=1, RescaleIntercept=-1024)
    out, p = _presented(path)
    assert p.rescaled and out.dtype == np.int16
    np.testing.assert_array_equal(out, STORED.astype(np.int64) - 1024)


def test_monochrome1_with_rescale_is_rescaled_then_inverted(tmp_path):
    path = write_image(tmp_path / "m1.dcm", STORED, modality="CR", photometric="MONOCHROME1", bits_stored=12,
                       RescaleSlope=2, RescaleIntercept=-100)
    out, p = _presented(path)
    lo, hi = -100.0, 4095 * 2 - 100.0
    assert out.dtype == np.float32 and (p.lo, p.hi) == (lo, hi)
    np.testing.assert_allclose(out, lo + hi - (STORED * 2.0 - 100))


def test_slices_with_different_rescale_are_float_each_with_its_own(tmp_path):
    a = write_image(tmp_path / "a.dcm", STORED, modality="PT", RescaleSlope=0.5, RescaleIntercept=0)
    b = write_image(tmp_path / "b.dcm", STORED, modality="PT", RescaleSlope=2.0, RescaleIntercept=0)
    ha, hb = _header(a), _header(b)
    p = pixels.plan_presentation([ha, hb])
    assert p.dtype == np.float32
    np.testing.assert_allclose(pixels.present(pixels.read_stored(a, ha), p, ha), STORED * 0.5)
    np.testing.assert_allclose(pixels.present(pixels.read_stored(b, hb), p, hb), STORED * 2.0)


@pytest.mark.parametrize("signed,raw,expected", [
    (False, [0xF123, 0x0FFF, 0x1000, 0], [0x123, 0xFFF, 0, 0]),  # bits above BitsStored are not part of the value
    (True, [0x0FFF, 0x0800, 0x07FF, 0xF001], [-1, -2048, 2047, 1]),  # sign from bit 11
])
def test_stored_values_use_only_bits_stored(tmp_path, signed, raw, expected):
    stored = np.array(raw, dtype=np.uint16).reshape(2, 2)
    path = write_image(tmp_path / "x.dcm", stored.view(np.int16) if signed else stored, bits_stored=12)
    h = _header(path)
    assert pixels.can_read_native(h)
    np.testing.assert_array_equal(pixels.read_native(path, h), np.reshape(expected, (2, 2)))
    np.testing.assert_array_equal(pixels.read_native(path, h), pydicom.dcmread(path).pixel_array)


def test_truncated_pixel_data_is_reported_with_the_byte_counts(tmp_path):
    path = write_image(tmp_path / "cut.dcm", np.zeros((4, 4), np.uint16))
    path.write_bytes(path.read_bytes()[:-8])
    h = _header(path)
    with pytest.raises(pixels.PixelDecodeError, match=r"^truncated pixel data: 32 bytes expected, the file holds 24$"):
        pixels.read_stored(path, h)
    with pytest.raises(pixels.PixelDecodeError, match=r"^broken header: PixelData holds 16 bytes, .* need 32$"):
        pixels.read_native(path, dict(h, pixel_length=16))


@pytest.mark.parametrize("compressed", ["MR_small_RLE.dcm", "MR_small_jp2klossless.dcm", "MR_small_bigendian.dcm"])
def test_compressed_and_big_endian_decode_to_the_same_values(compressed):
    reference = pydicom.dcmread(get_testdata_file("MR_small.dcm")).pixel_array
    path = Path(get_testdata_file(compressed))
    np.testing.assert_array_equal(pixels.read_stored(path, _header(path)), reference)
    native = Path(get_testdata_file("MR_small.dcm"))
    np.testing.assert_array_equal(pixels.read_stored(native, _header(native)), reference)


def test_an_undecodable_file_names_the_codec_but_not_its_path(tmp_path):
    folder = tmp_path / "DOE^JANE"
    folder.mkdir()
    path = Path(shutil.copy(get_testdata_file("JPEG-lossy.dcm"), folder / "img.dcm"))  # 12-bit JPEG no plugin reads
    with pytest.raises(pixels.PixelDecodeError) as err:
        pixels.read_stored(path, _header(path))
    msg = str(err.value)
    assert msg.startswith("cannot decode pixel data (JPEG Extended (Process 2 and 4)): ")
    assert str(tmp_path) not in msg and "DOE" not in msg
    assert isinstance(err.value, MedxferError)


def test_applied_window_keeps_higher_brighter_for_monochrome1(tmp_path):
    ramp = np.array([[0, 500, 1000, 1500], [2000, 2500, 3000, 4095]], dtype=np.uint16)
    window = {"WindowCenter": 2000, "WindowWidth": 1000, "sop_class": DigitalXRayImageStorageForPresentation}
    m2 = write_image(tmp_path / "m2.dcm", ramp, modality="DX", bits_stored=12, **window)
    m1 = write_image(tmp_path / "m1.dcm", ramp, modality="DX", bits_stored=12, photometric="MONOCHROME1", **window)
    (a2, p2), (a1, p1) = _presented(m2), _presented(m1)
    out2 = pixels.apply_voi(a2, m2, _header(m2), p2)
    out1 = pixels.apply_voi(a1, m1, _header(m1), p1)
    assert out2[0, 0] == out2[0, 1] == out2.min() and out2[1, 3] == out2[1, 2] == out2.max()  # clipped outside
    assert np.all(np.diff(out2.ravel()) >= 0)
    np.testing.assert_allclose(out1, p1.lo + p1.hi - out2)  # windowed on un-inverted values, then inverted


def test_colour_modes():
    rgb = np.zeros((2, 2, 3), np.uint8)
    rgb[0, 0] = (255, 0, 0)
    assert pixels.to_color_mode(rgb, "keep")[1] == "rgb"
    gray, how = pixels.to_color_mode(rgb, "gray")
    assert how == "rgb->gray" and gray.shape == (2, 2) and gray[0, 0] == round(255 * 0.299)
    same = np.repeat(np.arange(4, dtype=np.uint8).reshape(2, 2, 1), 3, axis=2)
    flat, how = pixels.to_color_mode(same, "auto")
    assert how == "gray" and np.array_equal(flat, same[..., 0])
    assert pixels.to_color_mode(rgb, "auto")[1] == "rgb"
    assert pixels.is_colour({"spp": 3}) and pixels.is_colour({"photometric": "PALETTE COLOR"})
    assert not pixels.is_colour({"spp": 1, "photometric": "MONOCHROME1"})


# ---------------------------------------------------------------- Modality LUT Sequence (0028,3000)
LUT = 3 * np.arange(4096, dtype=np.uint16) + 7  # a 12-bit input range mapped to 16-bit modality values


def _lut_item(lut: np.ndarray = LUT, bits: int = 16, lut_type: str = "US") -> Dataset:
    item = Dataset()
    item.add_new(0x00283002, "US", [len(lut), 0, bits])  # LUT Descriptor: entries, first value mapped, bits
    item.ModalityLUTType = lut_type
    item.add_new(0x00283006, "OW", lut.astype("<u2").tobytes())  # LUT Data
    return item


def _write_lut_image(path: Path, stored=STORED, item: Dataset | None = None, **kw) -> Path:
    ds = image_dataset(stored, bits_stored=12, **kw)
    ds.ModalityLUTSequence = [item or _lut_item()]
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def test_the_modality_lut_sequence_gives_the_values_not_the_stored_ones(tmp_path):
    path = _write_lut_image(tmp_path / "cr.dcm", modality="CR")
    h = _header(path)
    assert h["modality_lut"] and not pixels.can_read_native(h)  # the native fast path would read stored values
    out, p = _presented(path)
    np.testing.assert_array_equal(out, LUT[STORED])
    np.testing.assert_array_equal(out, pydicom.pixels.apply_modality_lut(pydicom.dcmread(path).pixel_array,
                                                                         pydicom.dcmread(path)))
    assert out.dtype == np.uint16 and p.lut


def test_monochrome1_with_a_modality_lut_is_inverted_over_the_lut_range(tmp_path):
    path = _write_lut_image(tmp_path / "m1.dcm", modality="CR", photometric="MONOCHROME1")
    out, p = _presented(path)
    assert (p.lo, p.hi) == (0, 65535)
    np.testing.assert_array_equal(out, 65535 - LUT[STORED].astype(np.int64))


def test_a_lut_of_twelve_bit_entries_is_read(tmp_path):
    lut = (np.arange(4096) // 2).astype(np.uint16)  # entries of 12 bits: pydicom alone has no uint12
    path = _write_lut_image(tmp_path / "x.dcm", item=_lut_item(lut, bits=12), modality="CR")
    out, p = _presented(path)
    np.testing.assert_array_equal(out, lut[STORED])
    assert (p.lo, p.hi) == (0, 4095)


def test_ingest_caches_modality_lut_values_and_says_so(tmp_path):
    """A 2D image and a volume (read slice by slice): the manifest's intensity says modality_lut."""
    src = tmp_path / "src"
    _write_lut_image(src / "cr.dcm", modality="CR", SeriesInstanceUID="1.2.826.0.1.3680043.8.498.10")
    for k in range(3):
        _write_lut_image(src / f"mr{k}.dcm", STORED + k, modality="MR", sop_class=MRImageStorage,
                         SeriesInstanceUID="1.2.826.0.1.3680043.8.498.11", ImageOrientationPatient=AXIAL,
                         ImagePositionPatient=[0.0, 0.0, float(k)], PixelSpacing=[1.0, 1.0])
    res = ingest(src, tmp_path / "out", workers=1)
    rows, _ = read_manifest(res.manifest)
    by_modality = {r["modality"]: r for r in rows}
    assert {r["intensity"] for r in rows} == {"modality_lut"} and set(by_modality) == {"CR", "MR"}
    image = np.asanyarray(nib.load(tmp_path / "out" / by_modality["CR"]["image"]).dataobj).T
    np.testing.assert_array_equal(image, LUT[STORED])
    volume = np.asanyarray(nib.load(tmp_path / "out" / by_modality["MR"]["image"]).dataobj).T
    np.testing.assert_array_equal(volume, np.stack([LUT[STORED + k] for k in range(3)]))


# ---------------------------------------------------------------- error texts quote no header value
@pytest.mark.filterwarnings("ignore:.*for VR CS:UserWarning")
def test_a_decoder_error_quotes_no_header_value(tmp_path):
    odd = image_dataset(STORED, photometric="YAMADA")  # no "^": the path-and-name scrub keeps it
    odd.save_as(tmp_path / "odd.dcm", enforce_file_format=True)
    h = dict(_header(write_image(tmp_path / "ok.dcm", STORED)), pixel_offset=None)  # as if the header were fine
    with pytest.raises(pixels.PixelDecodeError) as err:
        pixels.read_stored(tmp_path / "odd.dcm", h)
    assert "YAMADA" not in str(err.value) and "'…'" in str(err.value)


def test_decoder_errors_keep_only_known_words_in_quotes():
    exc = RuntimeError("gdcm: 'JPEG Extended' failed with '-1038'; Unknown (0028,0004) 'Photometric "
                       "Interpretation' value 'YAMADA' and 'MONOCHROME1'; 'pylibjpeg' read \"TARO\" at '/data/x.dcm'")
    text = pixels.decoder_error(exc)
    assert text == ("RuntimeError: gdcm: 'JPEG Extended' failed with '-1038'; Unknown (0028,0004) 'Photometric "
                    "Interpretation' value '…' and 'MONOCHROME1'; 'pylibjpeg' read '…' at '…'")
