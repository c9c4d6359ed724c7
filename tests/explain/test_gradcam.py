"""Grad-CAM lesion localization: scores, maps for every encoder, and the acceptance test
(Grad-CAM of a classifier that learned a finding inside the lesion scores higher with the true
masks than with masks shuffled across cases)."""
from __future__ import annotations

import csv
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from medxfer.models import create_classifier
from medxfer.models.encoders import ARCHS
from medxfer.models.freeze import apply_freeze
from medxfer.explain.gradcam import gradcam_maps, target_layer
from medxfer.explain.localization import (LocalizationCase, localize, plot_overlays, score_map, summarize,
                                          write_localization_csv)
from medxfer.transforms.pipelines import localization_transforms

SEED = 0
SIZE = 160  # 5 x 5 cells in the deepest map: coarser maps make the pointing game a lottery


# ----------------------------------------------------------------------------- score_map

def test_score_map_on_hand_made_maps():
    mask = np.zeros((10, 10), bool)
    mask[2:6, 2:6] = True  # 16 px
    cam = np.zeros((10, 10))
    cam[2:6, 4:8] = 0.6  # 16 px above half the max, 8 of them in the mask
    cam[3, 4] = 1.0  # peak inside the mask
    hit, dice, iou = score_map(cam, mask)
    assert hit == 1.0 and dice == pytest.approx(2 * 8 / 32) and iou == pytest.approx(8 / 24)

    outside = cam.copy()
    outside[3, 4], outside[3, 7] = 0.6, 1.0  # same region, peak outside the mask
    hit, dice, iou = score_map(outside, mask)
    assert hit == 0.0 and dice == pytest.approx(0.5) and iou == pytest.approx(1 / 3)

    # a higher threshold keeps only the peak pixel (inside the mask)
    assert score_map(cam, mask, threshold=0.7) == pytest.approx((1.0, 2 / 17, 1 / 16))
    # the exact mask as the region: perfect scores; an unsigned mask counts as nonzero = lesion
    assert score_map(mask * 0.9 + 0.0, mask.astype(np.uint8) * 255) == pytest.approx((1.0, 1.0, 1.0))
    assert score_map(np.zeros((10, 10)), mask) == (0.0, 0.0, 0.0)  # no evidence anywhere
    with pytest.raises(ValueError, match="empty mask"):
        score_map(cam, np.zeros((10, 10)))
    with pytest.raises(ValueError, match="shape"):
        score_map(cam, mask[:, :5])


def test_summarize_and_csv(tmp_path):
    cases = [LocalizationCase("a", 0, 1, 1.0, 0.5, 0.25), LocalizationCase("b", 1, 0, 0.0, 0.1, 0.05)]
    assert summarize(cases) == pytest.approx({"loc_hit": 0.5, "loc_dice": 0.3, "loc_iou": 0.15, "loc_cases": 2})
    assert summarize([])["loc_cases"] == 0 and np.isnan(summarize([])["loc_dice"])
    with open(write_localization_csv(tmp_path / "sub" / "loc.csv", cases)) as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0])[:6] == ["item_id", "fold", "label", "hit", "dice", "iou"]
    assert rows[1]["item_id"] == "b" and float(rows[1]["dice"]) == 0.1


# ----------------------------------------------------------------------------- maps for every encoder

def _hook_count(model: torch.nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
               + len(m._backward_pre_hooks) for m in model.modules())


def _state(model: torch.nn.Module):
    return ([(n, p.requires_grad) for n, p in model.named_parameters()],
            [(n, m.training) for n, m in model.named_modules()])


def _reference_cam(model, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """CAM by hand: with a pooled linear head Grad-CAM is ReLU(sum_k w_k A_k) of the deepest map,
    upsampled bilinearly and divided by its maximum."""
    training = [(m, m.training) for m in model.modules()]
    model.eval()
    with torch.no_grad():
        deepest = model.encoder(x)[-1]
    for m, mode in training:
        m.training = mode
    raw = F.relu(torch.einsum("bk,bkxy->bxy", weights, deepest))[:, None]
    up = F.interpolate(raw, size=x.shape[2:], mode="bilinear", align_corners=False)[:, 0]
    peak = up.flatten(1).amax(1)[:, None, None]
    return torch.where(peak > 0, up / peak.clamp_min(1e-30), torch.zeros_like(up))


@pytest.mark.parametrize("arch", [a for a in ARCHS if ARCHS[a].spatial_dims == 2])  # Grad-CAM here is 2D
def test_gradcam_maps_for_every_encoder(arch):
    torch.manual_seed(SEED)
    model = create_classifier(arch, num_classes=2, in_channels=1)
    model.train()  # the mode it is in must come back
    x = torch.randn(2, 1, 96, 96)  # the Keras-padded Inception classifiers take 75x75 and up
    w = model.head.weight.detach()
    before = _state(model)
    cam1, cam0 = gradcam_maps(model, x, 1), gradcam_maps(model, x, 0)
    mixed = gradcam_maps(model, x, torch.tensor([1, 0]))
    assert cam1.shape == (2, 96, 96) and cam1.dtype == torch.float32
    assert float(cam1.min()) >= 0.0 and float(cam1.max()) <= 1.0
    # binary head: the log-odds of the class; class 0 is the mirror image, so one of the two is not empty
    torch.testing.assert_close(cam1, _reference_cam(model, x, (w[1] - w[0]).expand(2, -1)), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(cam0, _reference_cam(model, x, (w[0] - w[1]).expand(2, -1)), atol=1e-4, rtol=1e-4)
    assert ((cam1.flatten(1).amax(1) + cam0.flatten(1).amax(1)) > 0).all()
    torch.testing.assert_close(mixed, torch.stack([cam1[0], cam0[1]]))
    assert _state(model) == before and _hook_count(model) == 0
    assert all(p.grad is None for p in model.parameters())

    # a frozen encoder (requires_grad False) still gives the same maps, and stays frozen
    apply_freeze(model.encoder, "all")
    before = _state(model)
    torch.testing.assert_close(gradcam_maps(model, x, 1), cam1)
    assert _state(model) == before and _hook_count(model) == 0
    assert all(p.grad is None for p in model.parameters())

    # the named layer, for MONAI's CAM tools on the bare classifier
    if arch == "densenet121":  # its deepest map is a functional ReLU after norm5: no module outputs it
        with pytest.raises(LookupError, match="no module outputs"):
            target_layer(model)
    else:
        name = target_layer(model)
        assert name.startswith("encoder.") and _hook_count(model) == 0 and _state(model) == before
        seen = []
        handle = dict(model.named_modules())[name].register_forward_hook(lambda m, i, o: seen.append(o))
        model.eval()
        with torch.no_grad():
            deepest = model.encoder(x)[-1]
        handle.remove()
        assert seen[-1] is deepest


@pytest.mark.parametrize("num_classes", [1, 3])
def test_gradcam_explains_the_class_logit_of_other_heads(num_classes):
    torch.manual_seed(SEED)
    model = create_classifier("mobilenet_v1_025", num_classes=num_classes, in_channels=3)
    x = torch.randn(2, 3, 64, 96)
    idx = torch.tensor([num_classes - 1, 0])
    w = model.head.weight.detach()[idx]
    cams = gradcam_maps(model, x, idx)
    assert cams.shape == (2, 64, 96)
    torch.testing.assert_close(cams, _reference_cam(model, x, w), atol=1e-4, rtol=1e-4)


def test_gradcam_keeps_existing_gradients_and_works_under_no_grad():
    torch.manual_seed(SEED)
    model = create_classifier("mobilenet_v1_025", num_classes=2, in_channels=1)
    x = torch.randn(2, 1, 64, 64)
    model(x).sum().backward()  # as in the middle of a training step
    grads = [p.grad.clone() for p in model.parameters()]
    with torch.no_grad():
        cams = gradcam_maps(model, x, 1)
    assert cams.shape == (2, 64, 64) and not cams.requires_grad
    assert all(torch.equal(p.grad, g) for p, g in zip(model.parameters(), grads))


# ----------------------------------------------------------------------------- a lesion cohort

@pytest.fixture(scope="module")
def lesion_cohort(tmp_path_factory):
    """48 ultrasound-like 160 px images, half malignant (bright echoes inside the lesion), ingested
    and split into 4 folds like a user's PNG folder, with the mask paths attached to the items."""
    from medxfer import synthetic
    from medxfer.engine import load_cohort
    from medxfer.ingest import ingest, split

    root = tmp_path_factory.mktemp("gradcam")
    labels = synthetic.write_lesion_pngs(root / "src", n_images=48, size=(SIZE, SIZE),
                                         rng=np.random.default_rng(SEED), classes=True)
    ingest(root / "src" / "images", root / "cohort", labels=labels, key="image", modality="US", workers=1)
    split(root / "cohort", 4, seed=SEED)
    manifest = root / "cohort" / "manifest.csv"
    cohort = load_cohort(manifest, "malignant", fold=0, localization=True, mask_root=root / "src")
    assert cohort.classes == ["no", "yes"]
    items = cohort.train + cohort.val + cohort.test
    assert all(i["mask"].endswith("_mask.png") for i in items)
    return SimpleNamespace(root=root, manifest=manifest, cohort=cohort, items=items)


def _recalibrate_batchnorm(model: torch.nn.Module, x: torch.Tensor) -> None:
    """Running statistics = this data's exact batch statistics (a short run leaves them lagging
    behind the weights: eval-mode logits would be shifted)."""
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
    model.train()
    with torch.no_grad():
        model(x)
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    model.eval()


@pytest.fixture(scope="module")
def trained(lesion_cohort):
    """A scratch ResNet18 trained briefly on the training + validation folds (flip augmentation)."""
    from medxfer.engine.classification import roc_auc
    from medxfer.transforms.pipelines import classification_transforms

    torch.manual_seed(SEED)
    model = create_classifier("resnet18", num_classes=2, in_channels=1)
    transform = classification_transforms(SIZE, 1, model.preprocessing, augment=False)
    data = [transform(i) for i in lesion_cohort.items]
    x = torch.stack([d["image"] for d in data])
    y = torch.tensor([int(d["label"]) for d in data])
    train = torch.tensor([k for k, i in enumerate(lesion_cohort.items) if i["fold"] != lesion_cohort.cohort.fold])
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(SEED)
    for _ in range(8):
        model.train()
        for batch in train[torch.randperm(len(train), generator=g)].split(8):
            xb = x[batch]
            for dim in (2, 3):
                if torch.rand(1, generator=g) < 0.5:
                    xb = xb.flip(dim)
            optimizer.zero_grad()
            F.cross_entropy(model(xb), y[batch]).backward()
            optimizer.step()
    _recalibrate_batchnorm(model, x[train])
    with torch.no_grad():
        prob = torch.softmax(model(x), 1).numpy()
    in_train = np.isin(np.arange(len(y)), train.numpy())
    return SimpleNamespace(model=model, auc=roc_auc(y.numpy()[in_train], prob[in_train]),
                           accuracy=float((prob.argmax(1) == y.numpy())[in_train].mean()))


def test_gradcam_localizes_a_finding_inside_the_lesion_better_than_shuffled_masks(lesion_cohort, trained, tmp_path):
    # the classifier learned the finding (else the comparison below would say nothing)
    assert trained.auc > 0.8 and trained.accuracy > 0.8
    items = lesion_cohort.items
    cases, samples = localize(trained.model, items, image_size=SIZE, in_channels=1, device="cpu", overlays=4)
    assert [c.item_id for c in cases] == [i["item_id"] for i in items]  # every mask is non-empty: all scored
    assert all(c.class_index == 1 for c in cases) and len(samples) == 4

    rng = np.random.default_rng(SEED)
    perm = rng.permutation(len(items))
    while (perm == np.arange(len(items))).any():  # a derangement: nobody keeps its own mask
        perm = rng.permutation(len(items))
    shuffled = [dict(item, mask=items[p]["mask"]) for item, p in zip(items, perm)]
    control, _ = localize(trained.model, shuffled, image_size=SIZE, in_channels=1, device="cpu", overlays=0)

    true, shuf = summarize(cases), summarize(control)
    assert true["loc_cases"] == shuf["loc_cases"] == len(items)
    # margins over seeds 0-7 (data, split, weights, batches): Dice 0.11-0.25, hit 0.21-0.50 (seed 0: 0.11, 0.21)
    assert true["loc_dice"] > shuf["loc_dice"] + 0.05, (true, shuf)
    assert true["loc_hit"] > shuf["loc_hit"] + 0.1, (true, shuf)
    assert true["loc_iou"] > shuf["loc_iou"], (true, shuf)
    # the maps of the same cases are identical: only the masks moved
    assert [(c.peak_x, c.peak_y) for c in cases] == [(c.peak_x, c.peak_y) for c in control]

    csv_path = write_localization_csv(tmp_path / "localization.csv", cases)
    assert sum(1 for _ in open(csv_path)) == len(cases) + 1
    png = plot_overlays(tmp_path / "gradcam.png", samples, title="Grad-CAM, resnet18")
    assert png.stat().st_size > 1000


def test_localize_skips_items_without_a_mask(lesion_cohort, trained):
    items = [dict(i) for i in lesion_cohort.items[:3]]
    del items[1]["mask"]
    cases, _ = localize(trained.model, items, image_size=SIZE, in_channels=1, device="cpu", batch_size=2)
    assert [c.item_id for c in cases] == [items[0]["item_id"], items[2]["item_id"]]


# ----------------------------------------------------------------------------- right mammograms

def test_right_mammogram_masks_are_mirrored_with_their_image(lesion_cohort):
    """MG + laterality R: the preset mirrors the image, and the mask must follow it."""
    from medxfer.transforms.pipelines import classification_transforms

    preprocessing = create_classifier("mobilenet_v1_025", in_channels=1).preprocessing
    transform = localization_transforms(SIZE, 1, preprocessing)
    item = lesion_cohort.items[0]
    left = transform(dict(item, modality="MG", laterality="L"))
    right = transform(dict(item, modality="MG", laterality="R"))
    # the image is exactly what the classifier sees
    reference = classification_transforms(SIZE, 1, preprocessing, augment=False)(
        dict(item, modality="MG", laterality="R"))
    torch.testing.assert_close(right["image"], reference["image"])
    torch.testing.assert_close(right["image"], left["image"].flip(1))
    assert torch.equal(right["mask"], left["mask"].flip(1)) and not torch.equal(right["mask"], left["mask"])
    for d in (left, right):  # the mask still covers the dark lesion
        inside = d["mask"][0] > 0.5
        assert d["image"][0][inside].mean() < d["image"][0][~inside].mean() - 0.5
