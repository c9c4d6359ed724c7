"""Ingest of non-DICOM inputs: PNG/PGM folders (BUSI-like) and NIfTI (nibabel's test data, a BIDS tree)."""
from __future__ import annotations

import csv
import json
import re
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from medxfer.ingest import DecodeOptions, ingest
from medxfer.ingest.manifest import parse_list, read_manifest

from ..conftest import find_identifiers


def _cached(out: Path, row: dict) -> np.ndarray:
    return np.asanyarray(nib.load(str(out / row["image"])).dataobj)


def _rows_by_path(res) -> tuple[dict[str, dict], dict]:
    """Manifest rows keyed by the (single) source file of each item, and the report."""
    report = json.loads(res.report.read_text())
    rows, _ = read_manifest(res.manifest)
    by_id = {r["item_id"]: r for r in rows}
    # The report hides identifier-bearing path parts (a BIDS subject label may be an MRN): the tests
    # know the label they wrote and put it back to look rows up by their source path.
    unredact = lambda p: re.sub(r"\[id-[0-9a-f]{8}\]", "MRN12345", p)  # noqa: E731
    by_path = {unredact(f["path"]): by_id[f["item_id"]] for f in report["files"] if f["status"] == "used"}
    return by_path, report


# ---------------------------------------------------------------- a BUSI-like PNG folder
RNG = np.random.default_rng(7)
BUSI = {  # path under images/ -> (pixels as PIL reads them (rows, cols[, 3]), label)
    "benign/benign (1).png": (RNG.integers(0, 256, (20, 30), dtype=np.uint8), "benign"),
    "benign/benign (2).png": (RNG.integers(0, 256, (18, 26, 3), dtype=np.uint8), "benign"),
    "malignant/malignant (1).png": (RNG.integers(0, 65536, (22, 17), dtype=np.uint16), "malignant"),
    "normal/normal (1).png": (RNG.integers(0, 256, (16, 24), dtype=np.uint8), "normal"),
}
MASK = "benign/benign (1)_mask.png"  # BUSI ships masks next to the images: an item without a label


@pytest.fixture
def busi(tmp_path) -> tuple[Path, Path]:
    """``busi/images/<class>/<class> (n).png`` and ``busi/labels.csv`` with paths relative to ``busi/``."""
    base = tmp_path / "busi"
    for rel, (pixels, _) in BUSI.items():
        p = base / "images" / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(p)
        assert np.array_equal(np.asarray(Image.open(p)), pixels)  # the PNG holds exactly these values
    Image.fromarray((BUSI["benign/benign (1).png"][0] > 128).astype(np.uint8) * 255).save(base / "images" / MASK)
    labels = base / "labels.csv"
    with open(labels, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "label"])
        for rel, (_, label) in BUSI.items():
            w.writerow([f"images/{rel}", label])
        w.writerow(["images/normal/normal (99).png", "normal"])  # no such image
    return base / "images", labels


def test_png_folder_labels_joined_by_path_suffix(busi, tmp_path):
    src, labels = busi
    out = tmp_path / "out"
    res = ingest(src, out, labels=labels, key="image", modality="US", workers=1)
    by_path, report = _rows_by_path(res)
    assert sorted(by_path) == sorted([*BUSI, MASK])
    assert report["counts"]["skipped"] == 0 and report["counts"]["items"] == len(BUSI) + 1
    assert report["counts"]["labels"] == {"rows": 5, "matched_rows": 4, "unmatched_rows": 1,
                                          "ambiguous_rows": 0, "items_labelled": 4, "items_without_label": 1}
    for rel, (pixels, label) in BUSI.items():
        row = by_path[rel]
        assert row["label"] == label, rel
        assert row["kind"] == "image" and row["source"] == "raster" and row["modality"] == "US"
        assert row["frames"] == "1"
        assert parse_list(row["shape"], int) == [pixels.shape[1], pixels.shape[0]]
        assert parse_list(row["spacing"]) == [1.0, 1.0]
        got = _cached(out, row)
        expected = pixels.transpose((1, 0, 2) if pixels.ndim == 3 else (1, 0))  # (rows, cols) -> (x, y)
        assert got.dtype == expected.dtype, rel
        np.testing.assert_array_equal(got, expected)
    assert by_path[MASK]["label"] == "" and by_path[MASK]["modality"] == "US"
    rgb = by_path["benign/benign (2).png"]
    assert rgb["channels"] == "3" and rgb["color"] == "rgb"
    assert by_path["malignant/malignant (1).png"]["channels"] == "1"
    # BUSI file names hold no identifier, but the manifest never copies source paths
    assert "benign (1)" not in res.manifest.read_text()

    # the CLI (the example of `medxfer ingest --help`) writes the same manifest
    from click.testing import CliRunner

    from medxfer.cli import main

    r = CliRunner().invoke(main, ["ingest", str(src), "--out", str(tmp_path / "cli_out"), "--labels", str(labels),
                                  "--key", "image", "--modality", "US", "--workers", "1"])
    assert r.exit_code == 0, (r.output, r.exception)
    assert (tmp_path / "cli_out" / "manifest.csv").read_text() == res.manifest.read_text()


def test_png_rgb_to_gray(busi, tmp_path):
    src, _ = busi
    out = tmp_path / "out"
    res = ingest(src, out, options=DecodeOptions(color="gray"), workers=1)
    by_path, _ = _rows_by_path(res)
    row = by_path["benign/benign (2).png"]
    assert row["channels"] == "1" and row["color"] == "rgb->gray"
    rgb = BUSI["benign/benign (2).png"][0].astype(np.float64)
    lum = np.round(rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114).astype(np.uint8)  # ITU-R 601
    got = _cached(out, row)
    assert got.shape == (26, 18) and got.dtype == np.uint8
    np.testing.assert_array_equal(got, lum.T)
    # gray images are untouched by the option
    np.testing.assert_array_equal(_cached(out, by_path["malignant/malignant (1).png"]),
                                  BUSI["malignant/malignant (1).png"][0].T)


def test_path_labels_need_a_real_suffix_not_just_the_file_name(tmp_path):
    """Two folders with the same file names (train/1.png, test/1.png): a label row for another folder
    (val/1.png) is neither path nor a suffix of either item's path, so it must stay unmatched."""
    src = tmp_path / "data"
    for folder in ("train", "test"):
        (src / folder).mkdir(parents=True)
        Image.fromarray(np.full((4, 5), 9, np.uint8)).save(src / folder / "1.png")
    labels = tmp_path / "labels.csv"
    labels.write_text("image,label\ndata/train/1.png,pos\ndata/val/1.png,neg\n")
    res = ingest(src, tmp_path / "out", labels=labels, key="image", workers=1)
    by_path, report = _rows_by_path(res)
    assert by_path["train/1.png"]["label"] == "pos"
    assert by_path["test/1.png"]["label"] == ""  # val/1.png's label must not land on test/1.png
    assert report["counts"]["labels"]["unmatched_rows"] == 1


# ---------------------------------------------------------------- PGM
def _pgm(path: Path, pixels: np.ndarray, maxval: int) -> None:
    """Binary (P5) PGM written by hand: 1 byte per sample up to maxval 255, else 2 bytes big-endian."""
    rows, cols = pixels.shape
    data = pixels.astype(">u2" if maxval > 255 else np.uint8).tobytes()
    path.write_bytes(f"P5\n# written by a test\n{cols} {rows}\n{maxval}\n".encode() + data)


@pytest.mark.parametrize("maxval", [
    255,
    65535,
    1023,  # Pillow would rescale these maxvals to 0..65535: medxfer reads PGM itself
    4095,
])
def test_pgm_values_kept(tmp_path, maxval):
    src = tmp_path / "src"
    src.mkdir()
    pixels = np.random.default_rng(maxval).integers(0, maxval + 1, (9, 13))
    pixels[0, 0], pixels[-1, -1] = 0, maxval
    _pgm(src / "scan.pgm", pixels, maxval)
    res = ingest(src, tmp_path / "out", workers=1)
    by_path, report = _rows_by_path(res)
    assert report["counts"]["used"] == 1, report["files"]
    row = by_path["scan.pgm"]
    assert row["shape"] == "13x9" and row["channels"] == "1"
    got = _cached(tmp_path / "out", row)
    np.testing.assert_array_equal(got, pixels.T)


# ---------------------------------------------------------------- NIfTI
SECRET = "PATIENT^SECRET"
BIDS_T1 = "sub-MRN12345/ses-01/anat/sub-MRN12345_T1w.nii.gz"
BIDS_T2 = "sub-MRN12345/ses-02/anat/sub-MRN12345_T2w.nii.gz"
OTHER_SUBJECT = "sub-02/ses-01/anat/sub-02_T1w.nii.gz"


def _affine(zooms, angle: float, origin) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    rot = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]])
    a = np.eye(4)
    a[:3, :3] = rot * np.asarray(zooms, float)
    a[:3, 3] = origin
    return a


def _identifying_nifti(path: Path, data: np.ndarray, affine: np.ndarray) -> None:
    img = nib.Nifti1Image(data, affine)
    img.header["descrip"] = f"{SECRET} MRN12345".encode()
    img.header["aux_file"] = SECRET.encode()
    img.header.extensions.append(nib.nifti1.Nifti1Extension("comment", f"patient {SECRET} id MRN12345".encode()))
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, str(path))
    back = nib.load(str(path))  # the identifiers really are in the input
    assert SECRET.encode() in bytes(back.header["descrip"]) and len(back.header.extensions) == 1


@pytest.fixture
def nifti_src(tmp_path) -> Path:
    from nibabel.testing import data_path

    src = tmp_path / "src"
    src.mkdir()
    for name in ("anatomical.nii", "example4d.nii.gz"):
        shutil.copy(Path(data_path) / name, src / name)
    rng = np.random.default_rng(3)
    _identifying_nifti(src / BIDS_T1, rng.integers(-500, 1500, (6, 7, 5)).astype(np.int16),
                       _affine((0.8, 0.9, 1.5), 0.3, (-10.0, 20.0, 5.5)))
    _identifying_nifti(src / BIDS_T2, rng.random((5, 6, 4)).astype(np.float32),
                       _affine((1.0, 1.0, 2.0), 0.0, (0.0, 0.0, 0.0)))
    _identifying_nifti(src / OTHER_SUBJECT, rng.integers(0, 255, (4, 4, 3)).astype(np.uint8), np.eye(4))
    return src


def test_nifti_fresh_header_same_data_and_affine(nifti_src, tmp_path):
    out = tmp_path / "out"
    res = ingest(nifti_src, out, workers=1)
    by_path, report = _rows_by_path(res)
    assert report["counts"]["skipped"] == 0
    assert sorted(by_path) == sorted(["anatomical.nii", "example4d.nii.gz", BIDS_T1, BIDS_T2, OTHER_SUBJECT])
    for rel, row in by_path.items():
        orig = nib.load(str(nifti_src / rel))
        cached = nib.load(str(out / row["image"]))
        assert row["source"] == "nifti" and row["kind"] == "volume", rel
        np.testing.assert_array_equal(np.asanyarray(cached.dataobj), np.asanyarray(orig.dataobj), err_msg=rel)
        np.testing.assert_allclose(cached.affine, orig.affine, atol=1e-5, err_msg=rel)
        np.testing.assert_allclose(parse_list(row["spacing"]), [float(z) for z in orig.header.get_zooms()[:3]],
                                   rtol=1e-5, err_msg=rel)
        # a fresh header: nothing free-text survives
        h = cached.header
        assert h["descrip"].item() == b"" and h["aux_file"].item() == b"", rel
        assert len(h.extensions) == 0, rel
    assert len(nib.load(str(nifti_src / "example4d.nii.gz")).header.extensions) > 0  # real extensions dropped

    # keyed pseudonyms from the BIDS folders: same subject -> same patient, other session -> other study
    t1, t2, other = by_path[BIDS_T1], by_path[BIDS_T2], by_path[OTHER_SUBJECT]
    assert t1["patient"] == t2["patient"] != other["patient"]
    assert t1["study"] != t2["study"]
    assert by_path["anatomical.nii"]["patient"] not in (t1["patient"], by_path["example4d.nii.gz"]["patient"])

    # the header strings appear nowhere in the output (report, manifest, index, decompressed images)
    assert find_identifiers(out, [SECRET]) == []
    # the subject label (an MRN) appears neither in the manifest nor in the cached images
    assert find_identifiers(out, ["MRN12345"]) == []


def test_nifti_4d_manifest_shape_describes_cached_image(nifti_src, tmp_path):
    from monai.transforms import LoadImage

    out = tmp_path / "out"
    by_path, _ = _rows_by_path(ingest(nifti_src, out, workers=1))
    row = by_path["example4d.nii.gz"]
    img = LoadImage(image_only=True)(str(out / row["image"]))
    assert tuple(img.shape) == (128, 96, 24, 2)
    assert list(img.shape) == parse_list(row["shape"], int)


def test_nifti_bids_subject_label_nowhere_in_output(nifti_src, tmp_path):
    out = tmp_path / "out"
    ingest(nifti_src, out, workers=1)
    assert find_identifiers(out, ["MRN12345"]) == []


def test_nifti_compressed_output_has_no_identifiers(nifti_src, tmp_path):
    """With --compress the cache is .nii.gz; find_identifiers decompresses it."""
    out = tmp_path / "out"
    res = ingest(nifti_src, out, workers=1, options=DecodeOptions(compress=True))
    rows, _ = read_manifest(res.manifest)
    assert rows and all(r["image"].endswith(".nii.gz") for r in rows)
    assert find_identifiers(out, [SECRET]) == []
    assert find_identifiers(out / "images", ["MRN12345"]) == []


# ---------------------------------------------------------------- MONAI reads the cache with its spacing
def test_monai_loadimage_reads_raster_and_nifti_items(busi, nifti_src, tmp_path):
    from monai.transforms import LoadImage

    load = LoadImage(image_only=True)
    res = ingest(busi[0], tmp_path / "out_png", workers=1)
    by_path, _ = _rows_by_path(res)
    row = by_path["malignant/malignant (1).png"]
    img = load(str(tmp_path / "out_png" / row["image"]))
    assert list(img.shape) == parse_list(row["shape"], int)
    np.testing.assert_allclose(img.pixdim.numpy(), parse_list(row["spacing"]), atol=1e-5)
    np.testing.assert_array_equal(img.numpy(), BUSI["malignant/malignant (1).png"][0].T)

    rgb = by_path["benign/benign (2).png"]
    img = LoadImage(image_only=True, channel_dim=-1)(str(tmp_path / "out_png" / rgb["image"]))
    assert list(img.shape) == [*parse_list(rgb["shape"], int), 3]  # (x, y, 3): channels last, as recorded
    np.testing.assert_array_equal(img.numpy(), BUSI["benign/benign (2).png"][0].transpose(1, 0, 2))

    res = ingest(nifti_src, tmp_path / "out_nii", workers=1)
    by_path, _ = _rows_by_path(res)
    row = by_path[BIDS_T1]
    img = load(str(tmp_path / "out_nii" / row["image"]))
    assert list(img.shape) == parse_list(row["shape"], int)
    np.testing.assert_allclose(img.pixdim.numpy(), parse_list(row["spacing"]), atol=1e-4)
    np.testing.assert_allclose(parse_list(row["spacing"]), [0.8, 0.9, 1.5], atol=1e-5)
