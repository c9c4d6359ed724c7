"""Volumes in a cohort: left out (and counted) without ``slices``, cut into slice samples with it,
per-slice labels, and slice samples batched with the 2D items of the same cohort."""
from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
from monai.data import DataLoader, Dataset

from medxfer.engine import CohortError, fold_roles, load_cohort
from medxfer.ingest.manifest import SLICE_LABELS_FILE, read_manifest, write_csv, write_slice_labels
from medxfer.models.preprocessing import SCRATCH
from medxfer.transforms.pipelines import classification_transforms
from medxfer.transforms.presets import LoadItemd

from .volume_builders import colour_cine_export, marker, nifti_cohort

N_SLICES = 8


@pytest.fixture
def built(tmp_path):
    """9 volumes (8 slices) + 6 PNG images + one 4D NIfTI, labelled pos/neg, 3 folds."""
    return nifti_cohort(tmp_path, n_volumes=9, n_slices=N_SLICES, n_images=6, folds=3, four_d=True)


def sources(built) -> dict[str, dict]:
    """item_id -> manifest row (with ``source_file``: v00…, i00…, t4d)."""
    return {r["item_id"]: r for r in built.rows()}


def test_without_slices_volumes_are_left_out_and_counted(built, tmp_path):
    rows, columns = read_manifest(built.manifest)
    images = [r for r in rows if r["kind"] == "image"]
    for i, r in enumerate(images):  # two images per fold: the 2D items alone make a 3-fold cohort
        r["fold"] = str(i % 3)
    write_csv(built.manifest, rows, columns)
    c = load_cohort(built.manifest, "label", fold=0)
    rows = sources(built)
    every = c.train + c.val + c.test
    assert not c.sliced and {rows[s["item_id"]]["source_file"][0] for s in every} == {"i"}  # the 6 images only
    assert c.skipped == {"volume": 10} and c.counts() == c.sample_counts() and sum(c.counts().values()) == 6
    only_volumes = tmp_path / "volumes" / "manifest.csv"
    only_volumes.parent.mkdir()
    with open(built.manifest) as f, open(only_volumes, "w", newline="") as g:
        reader = csv.DictReader(f)
        w = csv.DictWriter(g, reader.fieldnames)
        w.writeheader()
        w.writerows(r for r in reader if r["kind"] == "volume")
    with pytest.raises(CohortError, match=r"no usable item \(skipped: \{'volume': 10\}\); volumes and cines need "
                                          r"slices \(e\.g\. slices: all\)"):
        load_cohort(only_volumes, "label")


def test_slices_all_cuts_every_volume_into_samples_of_its_own_role(built):
    rows = sources(built)
    seen_in_test = []
    for fold in range(3):
        c = load_cohort(built.manifest, "label", fold=fold, slices="all")
        assert c.sliced and (c.input, c.slices, c.aggregate) == ("2d", "all", "mean")
        assert c.skipped == {"not_sliceable": 1}  # the 4D time series has no single slice axis
        roles = fold_roles([0, 1, 2], fold)
        all_ids = []
        for role in ("train", "val", "test"):
            expected = [i for i, r in rows.items() if int(r["fold"]) in roles[role] and r["source_file"] != "t4d"]
            samples = getattr(c, role)
            assert {s["fold"] for s in samples} == set(roles[role])
            items = {s["item_id"] for s in samples}
            assert items == set(expected) and c.counts()[role] == len(expected)
            n_vol = sum(rows[i]["kind"] == "volume" for i in expected)
            assert c.sample_counts()[role] == len(samples) == N_SLICES * n_vol + (len(expected) - n_vol)
            for item_id in items:
                mine = [s for s in samples if s["item_id"] == item_id]
                if rows[item_id]["kind"] == "volume":
                    assert [s["slice"] for s in mine] == list(range(N_SLICES))
                    assert [s["slice_indices"] for s in mine] == [[k] for k in range(N_SLICES)]
                    assert [s["sample_id"] for s in mine] == [f"{item_id}@{k}" for k in range(N_SLICES)]
                else:  # a 2D image stays whole, one sample
                    assert len(mine) == 1 and mine[0]["slice"] == -1 and mine[0]["slice_indices"] == [-1]
                label = c.classes.index(rows[item_id]["label"])
                assert {s["label"] for s in mine} == {s["item_label"] for s in mine} == {label}
            records = c.items(role)
            assert [r["item_id"] for r in records] == list(dict.fromkeys(s["item_id"] for s in samples))
            assert [r["label"] for r in records] == [c.classes.index(rows[r["item_id"]]["label"]) for r in records]
            all_ids += [s["sample_id"] for s in samples]
        assert len(all_ids) == len(set(all_ids))  # sample ids unique across the roles
        seen_in_test += [r["item_id"] for r in c.items("test")]
    assert sorted(seen_in_test) == sorted(i for i, r in rows.items() if r["source_file"] != "t4d")


def test_2_5d_takes_every_slice_with_the_end_slices_repeated(built):
    c = load_cohort(built.manifest, "label", fold=1, input="2.5d")
    assert c.sliced and c.input == "2.5d" and c.slices == "all"
    rows = sources(built)
    for s in c.train + c.val + c.test:
        if rows[s["item_id"]]["kind"] == "volume":
            k = s["slice"]
            assert s["slice_indices"] == [max(k - 1, 0), k, min(k + 1, N_SLICES - 1)]
        else:
            assert s["slice_indices"] == [-1, -1, -1]
    with pytest.raises(CohortError, match="slices of volumes are not grouped by view"):
        load_cohort(built.manifest, "label", input="2.5d", views=["CC", "MLO"])


@pytest.mark.parametrize("slices, picked", [
    ("center", [4]), ("every:3", [0, 3, 6]), ("range:0.25-0.75", [2, 3, 4, 5]), ("range:0.5-0.51", [4]),
    ("RANGE:0-1", list(range(N_SLICES))),
])
def test_each_slice_mode_picks_the_same_slices_of_every_volume(built, slices, picked):
    c = load_cohort(built.manifest, "label", fold=0, input="2.5d", slices=slices, aggregate="top:2")
    rows = sources(built)
    per_item: dict[str, list[int]] = {}
    for s in c.train + c.val + c.test:
        per_item.setdefault(s["item_id"], []).append(s["slice"])
    assert {i: v for i, v in per_item.items() if rows[i]["kind"] == "volume"} == \
        {i: picked for i, r in rows.items() if r["kind"] == "volume" and r["source_file"] != "t4d"}
    assert all(v == [-1] for i, v in per_item.items() if rows[i]["kind"] != "volume")
    assert c.aggregate == "top:2" and sum(c.counts().values()) == 15


def test_bad_slice_settings_are_one_line_errors(built):
    from medxfer.engine.slices import SliceSettingError

    for kw, message in (({"slices": "most"}, "slices: 'most'"), ({"input": "4d"}, "input: '4d'"),
                        ({"aggregate": "median"}, "aggregate: 'median'"), ({"slices": "every:0"}, "K >= 1")):
        with pytest.raises(SliceSettingError, match=message) as e:
            load_cohort(built.manifest, "label", **kw)
        assert "\n" not in str(e.value)


def test_slice_samples_load_their_slices_and_batch_with_2d_items(built):
    """One batch of slice samples (2.5D slabs) and whole 2D images through the real training
    transforms: every sample is 3×32×32, the slabs hold their slices' markers."""
    c = load_cohort(built.manifest, "label", fold=0, input="2.5d", slices="every:3")
    rows = sources(built)
    samples = c.train + c.val + c.test
    vol = next(s for s in samples if rows[s["item_id"]]["kind"] == "volume" and s["slice"] == 3)
    raw = LoadItemd("image", in_channels=3)(vol)["image"]
    assert raw[:, 0, 0].tolist() == [marker(2), marker(3), marker(4)]  # slices k-1, k, k+1 of that volume
    edge = next(s for s in samples if s["item_id"] == vol["item_id"] and s["slice"] == 0)
    assert LoadItemd("image", in_channels=3)(edge)["image"][:, 0, 0].tolist() == [marker(0), marker(0), marker(1)]

    for augment in (True, False):
        transform = classification_transforms(32, 3, SCRATCH, augment=augment)
        batch = next(iter(DataLoader(Dataset(samples, transform), batch_size=len(samples), shuffle=True)))
        assert tuple(batch["image"].shape) == (len(samples), 3, 32, 32)
        assert torch.isfinite(batch["image"]).all()
        assert sorted(batch["sample_id"]) == sorted(s["sample_id"] for s in samples)
        kinds = {rows[i]["kind"] for i in batch["item_id"]}
        assert kinds == {"volume", "image"}
        assert batch["label"].shape == batch["item_label"].shape == (len(samples),)
    gray = classification_transforms(32, 1, SCRATCH, augment=False)
    c2 = load_cohort(built.manifest, "label", fold=0, slices="center")
    batch = next(iter(DataLoader(Dataset(c2.train + c2.test, gray), batch_size=64)))
    assert tuple(batch["image"].shape[1:]) == (1, 32, 32)


def _slice_labels(built, by_source: dict[str, dict[int, str]], column: str) -> None:
    ids = {r["source_file"]: r["item_id"] for r in built.rows()}
    rows = [{"item_id": ids[name], "slice": k, column: v} for name, by in by_source.items() for k, v in by.items()]
    write_slice_labels(built.out / SLICE_LABELS_FILE, rows, [column])


def _volume_left_alone(built) -> str:
    """A volume whose fold keeps another volume (so leaving it out keeps three folds)."""
    vols = [r for r in built.rows() if r["kind"] == "volume" and r["source_file"] != "t4d"]
    return next(r["source_file"] for r in vols if sum(v["fold"] == r["fold"] for v in vols) > 1)


def test_per_slice_labels_label_their_slices_and_the_volume_takes_the_most_severe(built):
    alone = _volume_left_alone(built)
    vols = sorted(r["source_file"] for r in built.rows() if r["kind"] == "volume" and r["source_file"] not in
                  (alone, "t4d"))
    own = {name: {1: "0", 3: "1" if i % 2 else "0", 6: "0"} for i, name in enumerate(vols)}
    _slice_labels(built, own, "finding")  # a column only the slice labels have
    rows = sources(built)
    name_of = {i: r["source_file"] for i, r in rows.items()}

    c = load_cohort(built.manifest, "finding", fold=0, input="2.5d", slices="labelled")
    # the images, the 4D series and the volume without slice labels have no "finding" at all
    assert c.skipped == {"no_label": 6 + 1 + 1} and c.classes == ["0", "1"]
    samples = c.train + c.val + c.test
    assert {name_of[s["item_id"]] for s in samples} == set(vols)
    for s in samples:
        by = own[name_of[s["item_id"]]]
        assert s["slice"] in (1, 3, 6) and s["label"] == int(by[s["slice"]])
        assert s["item_label"] == int("1" in by.values())  # positive when any of its slices is
    assert sum(c.counts().values()) == len(vols) and sum(c.sample_counts().values()) == 3 * len(vols)
    assert all(r["label"] == int("1" in own[name_of[r["item_id"]]].values()) for r in c.items("test"))

    every = load_cohort(built.manifest, "finding", fold=0, slices="all")
    for s in every.train + every.val + every.test:  # a slice without its own label carries the volume's
        by = own[name_of[s["item_id"]]]
        item = int("1" in by.values())
        assert s["item_label"] == item and s["label"] == (int(by[s["slice"]]) if s["slice"] in by else item)
    assert sum(every.sample_counts().values()) == N_SLICES * len(vols)


def test_the_most_severe_slice_follows_the_order_of_the_named_classes(built):
    alone = _volume_left_alone(built)
    vols = sorted(r["source_file"] for r in built.rows() if r["kind"] == "volume" and r["source_file"] not in
                  (alone, "t4d"))
    patterns = [{0: "small", 2: "large", 5: "none"}, {1: "none"}, {1: "small", 2: "none"}]
    own = {name: patterns[i % 3] for i, name in enumerate(vols)}
    _slice_labels(built, own, "lesion")
    expected = {name: ("large" if "large" in by.values() else "small" if "small" in by.values() else "none")
                for name, by in own.items()}
    classes = ["none", "small", "large"]
    c = load_cohort(built.manifest, "lesion", fold=2, classes=classes, slices="labelled")
    name_of = {r["item_id"]: r["source_file"] for r in built.rows()}
    for role in ("train", "val", "test"):
        for r in c.items(role):
            assert classes[r["label"]] == expected[name_of[r["item_id"]]]
            assert r["label_name"] == expected[name_of[r["item_id"]]]
    assert c.classes == classes


def test_labelled_keeps_2d_items_whole_and_leaves_out_volumes_without_labelled_slices(built):
    rows = built.rows()
    vols = sorted(r["source_file"] for r in rows if r["kind"] == "volume" and r["source_file"] != "t4d")
    labelled, unlabelled = vols[:6], vols[6:]
    own = {name: {2: "pos", 5: "neg"} for name in labelled}
    own[labelled[0]] = {99: "pos"}  # no slice 99 in an 8-slice volume: no sample
    _slice_labels(built, own, "label")  # the manifest's own label column: the item label stays the manifest's
    c = load_cohort(built.manifest, "label", fold=0, slices="labelled")
    assert c.skipped == {"not_sliceable": 1, "no_labelled_slice": len(unlabelled) + 1}
    name_of = {r["item_id"]: r["source_file"] for r in rows}
    item_label = {r["source_file"]: r["label"] for r in rows}
    per_item: dict[str, list] = {}
    for s in c.train + c.val + c.test:
        per_item.setdefault(name_of[s["item_id"]], []).append((s["slice"], c.classes[s["label"]],
                                                               c.classes[s["item_label"]]))
    assert {n for n in per_item if n.startswith("i")} == {f"i{k:02d}" for k in range(6)}  # 2D items used whole
    for name in labelled[1:]:
        assert per_item[name] == [(2, "pos", item_label[name]), (5, "neg", item_label[name])]
    assert not set(unlabelled) & set(per_item) and labelled[0] not in per_item


def test_a_volume_sample_reads_the_slice_its_index_names(built):
    c = load_cohort(built.manifest, "label", fold=0, slices="all")
    rows = sources(built)
    load = LoadItemd("image", in_channels=1)
    for s in c.test:
        if rows[s["item_id"]]["kind"] == "volume":
            img = load(s)["image"]
            assert tuple(img.shape) == (1, 16, 16) and img[0, 0, 0].item() == marker(s["slice"])
            pos = rows[s["item_id"]]["label"] == "pos"
            assert (img.max().item() == 250) == (pos and s["slice"] in (N_SLICES // 2 - 1, N_SLICES // 2))
    assert np.isfinite(c.class_counts("train")).all()


def test_colour_cines_are_left_out_without_slices_and_cut_into_colour_frames_with_them(tmp_path):
    """A colour ultrasound cine is a (x, y, frame, RGB) item, not a 2D RGB image: without slices it
    is left out and counted like a volume; with slices its frames become 3-channel samples."""
    built = colour_cine_export(tmp_path, n_cines=6, frames=6, folds=3)
    rows = built.rows()
    assert {(r["kind"], r["channels"], r["shape"]) for r in rows} == {("cine", "3", "48x32x6")}
    with pytest.raises(CohortError, match=r"skipped: \{'volume': 6\}\); volumes and cines need slices"):
        load_cohort(built.manifest, "doppler")
    c = load_cohort(built.manifest, "doppler", fold=0, slices="every:2")
    samples = c.train + c.val + c.test
    assert sum(c.counts().values()) == 6 and len(samples) == 6 * 3
    assert {s["item_id"]: [] for s in samples}.keys() == {r["item_id"] for r in rows}
    assert sorted({s["slice"] for s in samples}) == [0, 2, 4] and all(s["slice_indices"] == [s["slice"]]
                                                                       for s in samples)
    frame = LoadItemd("image", in_channels=3)(samples[0])["image"]
    assert tuple(frame.shape) == (3, 48, 32)
    transform = classification_transforms(32, 3, SCRATCH, augment=True)
    batch = next(iter(DataLoader(Dataset(samples, transform), batch_size=len(samples))))
    assert tuple(batch["image"].shape) == (len(samples), 3, 32, 32)


def test_volumes_labelled_per_slice_need_the_classes_in_order_of_severity(built):
    vols = sorted(r["source_file"] for r in built.rows() if r["kind"] == "volume" and r["source_file"] != "t4d")
    _slice_labels(built, {name: {1: "finding", 2: "none"} for name in vols}, "lesion")
    # sorted text order would make "none" the most severe class: refused, with what to write instead
    with pytest.raises(CohortError, match=r"name the classes in order of severity"):
        load_cohort(built.manifest, "lesion", fold=2, slices="labelled")
    c = load_cohort(built.manifest, "lesion", fold=2, classes=["none", "finding"], slices="labelled")
    assert {r["label_name"] for role in ("train", "val", "test") for r in c.items(role) if r["slice"] >= 0} \
        == {"finding"}
