"""Dataset similarity between a source and a target cohort ("Cats, not CAT scans" asks whether
it predicts transfer): distances of pooled features under one fixed encoder, and of simple
intensity statistics.

- Fréchet distance between Gaussians fitted to the two feature sets (the FID formula);
  covariances get a small ridge so it is defined when there are fewer images than features.
- Squared MMD with a Gaussian kernel, unbiased estimator, bandwidth by the median heuristic on
  the pooled features.
- Intensity distance: per-image mean, SD and 5/50/95th percentiles of the preprocessed image
  (the network's view, in [0, 1]), compared as the norm of the difference of the two cohorts'
  mean statistics in units of their pooled SD.

Features come from :func:`medxfer.engine.features.cached_features`, so a cohort's features under
an encoder are computed once and shared with ``freeze: all`` study cells.
"""
from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from monai.data import DataLoader, Dataset
from monai.transforms import Compose

from ..core.hashing import sha256_file, stable_digest
from ..engine.features import cached_features
from ..engine.predict import manifest_items
from ..models import create_classifier
from ..tracking.layout import SIMILARITY_ARTIFACT, TAG_SIMILARITY_HASH
from ..transforms.pipelines import deterministic_transforms


@dataclass(frozen=True)
class Similarity:
    """Distances between two cohorts (smaller = more similar)."""

    frechet: float
    mmd2: float
    intensity: float
    n_source: int
    n_target: int


def frechet_distance(a: np.ndarray, b: np.ndarray, ridge: float = 1e-6) -> float:
    """‖μa − μb‖² + Tr(Σa + Σb − 2 (Σa Σb)^½) of features (n, d)."""
    from scipy import linalg

    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    mu_a, mu_b = a.mean(0), b.mean(0)
    eye = np.eye(a.shape[1]) * ridge
    cov_a = np.atleast_2d(np.cov(a, rowvar=False)) + eye
    cov_b = np.atleast_2d(np.cov(b, rowvar=False)) + eye
    covmean = linalg.sqrtm(cov_a @ cov_b)
    covmean = covmean.real if np.iscomplexobj(covmean) else covmean
    return float(max(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a + cov_b - 2.0 * covmean), 0.0))


def mmd2_rbf(a: np.ndarray, b: np.ndarray, bandwidth: float | None = None) -> float:
    """Unbiased squared MMD with k(x, y) = exp(−‖x − y‖² / (2 h²)); h = median pairwise distance."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    both = np.vstack([a, b])
    sq = (both ** 2).sum(1)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2.0 * both @ both.T, 0.0)
    if bandwidth is None:
        upper = d2[np.triu_indices(len(both), 1)]
        bandwidth = float(np.sqrt(np.median(upper))) or 1.0
    k = np.exp(-d2 / (2.0 * bandwidth ** 2))
    m, n = len(a), len(b)
    kaa, kbb, kab = k[:m, :m], k[m:, m:], k[:m, m:]
    return float((kaa.sum() - np.trace(kaa)) / (m * (m - 1)) + (kbb.sum() - np.trace(kbb)) / (n * (n - 1))
                 - 2.0 * kab.mean())


def intensity_statistics(images: list[np.ndarray]) -> np.ndarray:
    """(n, 5): mean, SD, 5th, 50th and 95th percentile of each image."""
    return np.array([[img.mean(), img.std(), *np.percentile(img, [5, 50, 95])] for img in images], np.float64)


def intensity_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Norm of the difference of mean statistics, each in units of the pooled SD of that statistic."""
    pooled = np.sqrt((a.var(0, ddof=1) + b.var(0, ddof=1)) / 2.0)
    pooled[pooled == 0] = 1.0
    return float(np.linalg.norm((a.mean(0) - b.mean(0)) / pooled))


def _cohort(manifest: str | os.PathLike, modalities: list[str] | None, network, image_size: int, in_channels: int,
            cache_dir: Path, device: str) -> tuple[np.ndarray, np.ndarray]:
    items = manifest_items(manifest, modalities)
    feats = cached_features(network, items, image_size, in_channels, cache_dir, device)
    loader = DataLoader(Dataset(items, Compose(deterministic_transforms(image_size, in_channels))), batch_size=32)
    images = [img.numpy() for batch in loader for img in batch["image"]]
    return np.stack([feats[i["item_id"]].numpy() for i in items]), intensity_statistics(images)


def dataset_similarity(source: str | os.PathLike, target: str | os.PathLike, encoder: str = "resnet18",
                       weights: str = "scratch", image_size: int = 128, in_channels: int = 1,
                       source_modalities: list[str] | None = None, target_modalities: list[str] | None = None,
                       cache_dir: str | os.PathLike | None = None, device: str = "cpu", seed: int = 0) -> Similarity:
    """Distances between two ingested cohorts (manifest files or folders) under one fixed encoder.
    With ``weights="scratch"`` the random encoder is seeded, so distances are reproducible."""
    return dataset_similarities({"source": (source, source_modalities)}, target, encoder, weights, image_size,
                                in_channels, target_modalities, cache_dir, device, seed)["source"]


def dataset_similarities(sources: dict[str, tuple[str | os.PathLike, list[str] | None]], target: str | os.PathLike,
                         encoder: str = "resnet18", weights: str = "scratch", image_size: int = 128,
                         in_channels: int = 1, target_modalities: list[str] | None = None,
                         cache_dir: str | os.PathLike | None = None, device: str = "cpu",
                         seed: int = 0) -> dict[str, Similarity]:
    """:func:`dataset_similarity` of several sources (name → (cohort, modalities)) to one target:
    one encoder, and the target's features and intensity statistics computed once."""
    torch.manual_seed(seed)
    network = create_classifier(encoder, weights, num_classes=2, in_channels=in_channels, freeze="all").to(device)
    target_dir = Path(target) if Path(target).is_dir() else Path(target).parent
    cache = Path(cache_dir) if cache_dir else target_dir.resolve() / ".medxfer" / "features"
    fb, ib = _cohort(target, target_modalities, network, image_size, in_channels, cache, device)
    out = {}
    for name, (source, modalities) in sources.items():
        fa, ia = _cohort(source, modalities, network, image_size, in_channels, cache, device)
        out[name] = Similarity(frechet=frechet_distance(fa, fb), mmd2=mmd2_rbf(fa, fb),
                               intensity=intensity_distance(ia, ib), n_source=len(fa), n_target=len(fb))
    return out

def study_similarity(spec, device: str = "cpu") -> dict:
    """Distances of each source cohort of ``spec.similarity`` to the study's cohort, as the
    ``similarity.json`` record the report correlates with the transfer scores."""
    settings = spec.similarity
    out = {k: settings[k] for k in ("encoder", "weights", "image_size", "in_channels")}
    sims = dataset_similarities({name: (source["manifest"], source.get("modalities"))
                                 for name, source in sorted(settings["sources"].items())},
                                spec.manifest, encoder=settings["encoder"], weights=settings["weights"],
                                image_size=settings["image_size"], in_channels=settings["in_channels"],
                                target_modalities=spec.data.get("modalities"),
                                cache_dir=spec.train.get("feature_cache_dir"), device=device)
    out["target"] = {"n": next(iter(sims.values())).n_target}
    out["sources"] = {name: {"frechet": sim.frechet, "mmd2": sim.mmd2, "intensity": sim.intensity, "n": sim.n_source}
                      for name, sim in sims.items()}
    return out


def similarity_hash(spec) -> str:
    """What the similarity record depends on: its settings and the cohorts' manifests' content."""
    settings = dict(spec.similarity)
    blob = {"settings": {k: v for k, v in settings.items() if k != "sources"},
            "target": sha256_file(spec.manifest), "modalities": spec.data.get("modalities"),
            "sources": {n: [sha256_file(s["manifest"]), s.get("modalities")] for n, s in settings["sources"].items()}}
    return stable_digest(blob, 16)


def log_study_similarity(spec, client, parent_run_id: str, echo=lambda s: None, device: str | None = None) -> bool:
    """Compute and log ``similarity.json`` on the study's parent run unless the parent already
    holds it for the same settings and cohorts. Returns whether it was computed."""
    key = similarity_hash(spec)
    if client.get_run(parent_run_id).data.tags.get(TAG_SIMILARITY_HASH) == key:
        return False
    echo(f"dataset similarity of {len(spec.similarity['sources'])} source cohort(s) to the study's cohort")
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    record = study_similarity(spec, device)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / SIMILARITY_ARTIFACT
        path.write_text(json.dumps(record, indent=2) + "\n")
        client.log_artifact(parent_run_id, str(path))
    client.set_tag(parent_run_id, TAG_SIMILARITY_HASH, key)
    return True
