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
- Task2Vec distance (Achille et al. 2019, "Task2Vec: Task Embedding for Meta-Learning"), a distance
  of the two *tasks* (images and labels), not only of the images: the same fixed encoder is the
  probe network; a linear head is fitted on each cohort's labels (encoder frozen, on the cached
  features), then the diagonal Fisher information of the encoder's weights for that task is
  estimated and averaged per filter, giving one embedding per cohort. Estimator (the paper's
  ``montecarlo`` method, not its variational one, with less noise): squared per-image gradients of
  the log-likelihood of labels from the probe's own predictive distribution, the expectation over
  those labels taken exactly (K − 1 backward passes per image; above
  :data:`EXACT_FISHER_MAX_CLASSES` classes one label is drawn, as in the paper), averaged over at
  most ``max_items`` images per cohort drawn class-balanced. Per-image squares, not the square of
  a batch's mean gradient as the paper's code computes. BatchNorm uses its running statistics.
  Distance: the paper's symmetric normalised cosine, ``cos_dist(a / (a + b), b / (a + b))``
  element-wise. A cohort needs a label column (classification); without one its Task2Vec
  distance is None with the reason. A scratch probe is a random network: Task2Vec then tells tasks
  apart by how their heads weigh random features, coarser than with pretrained weights.

Features come from :func:`medxfer.engine.features.cached_features`, so a cohort's features under
an encoder are computed once and shared with ``freeze: all`` study cells.
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import DataLoader, Dataset
from monai.transforms import Compose
from torch import nn

from ..core.hashing import sha256_file, stable_digest
from ..engine.data import CohortError, class_values
from ..engine.features import cached_features
from ..engine.predict import manifest_items
from ..ingest.manifest import read_manifest
from ..models import create_classifier
from ..tracking.layout import SIMILARITY_ARTIFACT, TAG_SIMILARITY_HASH
from ..transforms.pipelines import classification_transforms, deterministic_transforms

EXACT_FISHER_MAX_CLASSES = 16  # up to this many classes the Fisher's expectation over labels is exact (K − 1 passes)
TASK2VEC_ESTIMATOR = ("diagonal Fisher of the encoder's weights: squared per-image gradients of the log-likelihood, "
                      "the expectation over the probe's predictive label distribution exact (one label drawn per "
                      f"image above {EXACT_FISHER_MAX_CLASSES} classes), averaged over images and per filter")


@dataclass(frozen=True)
class Similarity:
    """Distances between two cohorts (smaller = more similar)."""

    frechet: float
    mmd2: float
    intensity: float
    n_source: int
    n_target: int
    task2vec: float | None = None  # None: not computed (task2vec_note says why)
    task2vec_note: str = ""


@dataclass(frozen=True)
class Task2VecSettings:
    """How Task2Vec embeds a cohort: the head is fitted in ``epochs`` full-batch Adam steps (``lr``) on
    the cached features of every labelled image; the Fisher is estimated on at most ``max_items``
    images, drawn class-balanced."""

    max_items: int = 64
    epochs: int = 100
    lr: float = 0.01


@dataclass(frozen=True)
class CohortSource:
    """A cohort to compare: its manifest (or ingested folder), the modalities kept, and for Task2Vec
    its label column and optionally the classes (as a study's ``classes``: list or mapping)."""

    manifest: str | os.PathLike
    modalities: list[str] | None = None
    label: str | None = None
    classes: list | dict | None = None


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


def normalized_cosine_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Task2Vec's symmetric distance of two embeddings (non-negative Fisher diagonals): the cosine
    distance of ``a / (a + b)`` and ``b / (a + b)``, element-wise; an element zero in both is left
    out (0 in both, as the paper's ``+ ε``). Zero for identical embeddings and for one a multiple
    of the other (a Fisher's overall scale drops out); 1 when one is all zero and the other not."""
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    if a.shape != b.shape:
        raise ValueError(f"embeddings of different lengths: {a.size} vs {b.size}")
    total = a + b
    ra = np.divide(a, total, out=np.zeros_like(a), where=total > 0)
    rb = np.divide(b, total, out=np.zeros_like(b), where=total > 0)
    norms = np.linalg.norm(ra) * np.linalg.norm(rb)
    if norms == 0:
        return 0.0 if not total.any() else 1.0
    return float(min(max(1.0 - ra @ rb / norms, 0.0), 1.0))


def fisher_diagonal(model: Callable[[torch.Tensor], torch.Tensor], inputs: Iterable[torch.Tensor],
                    params: Sequence[torch.Tensor], generator: torch.Generator | None = None) -> list[torch.Tensor]:
    """Diagonal of the Fisher information of ``params`` for the classifier ``model`` (a batch of
    one → logits (1, K)): over the ``inputs`` (each a batch of one), the mean of
    ``E_{y ~ p(·|x)} (∂ log p(y|x) / ∂θ)²``, with ``y`` from the model's own predictive distribution
    (not the dataset's label: that would be the empirical Fisher).

    With a ``generator``: Monte Carlo, one ``y`` drawn per input (the paper's ``montecarlo``
    method, one backward pass per input). Without: the expectation over ``y`` exactly, as
    ``Σ_m (∂ (r_m · z) / ∂θ)²`` where ``Σ_m r_m r_mᵀ = diag(p) − p pᵀ`` (the covariance of the
    one-hot label, whose rank is K − 1): K − 1 backward passes per input, no label noise."""
    totals = [torch.zeros_like(p) for p in params]
    n = 0
    for x in inputs:
        logits = model(x).float()
        if generator is not None:
            y = torch.multinomial(torch.softmax(logits.detach().cpu(), 1), 1, generator=generator).view(-1)
            scalars = [-nn.functional.cross_entropy(logits, y.to(logits.device), reduction="sum")]
        else:
            prob = torch.softmax(logits.detach()[0].double(), 0)
            values, vectors = torch.linalg.eigh(torch.diag(prob) - torch.outer(prob, prob))
            roots = (vectors * values.clamp(min=0).sqrt()).to(logits.dtype).T  # rows r_m
            scalars = [(r * logits[0]).sum() for r, v in zip(roots, values) if v > 1e-12]
        for k, scalar in enumerate(scalars):
            grads = torch.autograd.grad(scalar, list(params), retain_graph=k < len(scalars) - 1)
            for total, grad in zip(totals, grads):
                total += grad.detach() ** 2
        n += 1
    if n == 0:
        raise ValueError("the Fisher needs at least one input")
    return [t / n for t in totals]


def filterwise(fisher: Sequence[torch.Tensor]) -> np.ndarray:
    """Task2Vec's embedding of per-weight Fisher values: each tensor's mean per filter (its first
    axis: a convolution's output channel, a norm layer's channel), concatenated."""
    return np.concatenate([f.detach().cpu().double().reshape(f.shape[0], -1).mean(1).numpy() for f in fisher])


def probe_weights(network: nn.Module) -> list[nn.Parameter]:
    """The weights Task2Vec takes the Fisher of: every ``weight`` of the encoder's layers
    (convolutions, norm layers; not biases, not the classifier head), in module order."""
    return [m._parameters["weight"] for m in network.encoder.modules()
            if isinstance(m._parameters.get("weight"), nn.Parameter)]


@contextlib.contextmanager
def _gradients_on(params: Sequence[nn.Parameter]) -> Iterator[None]:
    """Gradients of the frozen encoder's weights while the Fisher is computed, frozen again after
    (the feature cache refuses an encoder that is not frozen)."""
    before = [p.requires_grad for p in params]
    try:
        for p in params:
            p.requires_grad_(True)
        yield
    finally:
        for p, flag in zip(params, before):
            p.requires_grad_(flag)


def task_labels(manifest: str | os.PathLike, items: list[dict], label: str,
                classes: list | dict | None = None) -> tuple[dict[str, int], list[str]]:
    """Class index per ``item_id`` of ``items`` from the manifest's ``label`` column (classes: the
    sorted distinct values, or as ``classes`` names / groups them); items without a value, or with
    a value of no class, are left out. Raises :class:`CohortError` for a missing column."""
    path = Path(manifest)
    path = path / "manifest.csv" if path.is_dir() else path
    rows, columns = read_manifest(path)
    if label not in columns:
        raise CohortError(f"{path}: no label column {label!r}")
    value_of = {r["item_id"]: (r.get(label) or "").strip() for r in rows}
    values = sorted({value_of.get(i["item_id"], "") for i in items} - {""})
    class_of = class_values(classes) if classes else {v: v for v in values}
    names = list(dict.fromkeys(class_of.values()))
    out = {i["item_id"]: names.index(class_of[value_of[i["item_id"]]]) for i in items
           if value_of.get(i["item_id"]) in class_of}
    return out, names


def _balanced_subset(ids: list[str], labels: dict[str, int], max_items: int, rng: np.random.Generator) -> list[str]:
    """At most ``max_items`` of ``ids``, the classes taken in turn (each class shuffled by ``rng``)."""
    queues = [list(rng.permutation([i for i in ids if labels[i] == k])) for k in sorted({labels[i] for i in ids})]
    out: list[str] = []
    while len(out) < max_items and any(queues):
        for q in queues:
            if q and len(out) < max_items:
                out.append(str(q.pop()))
    return out


def _fit_head(features: torch.Tensor, labels: torch.Tensor, num_classes: int, settings: Task2VecSettings,
              seed: int) -> nn.Linear:
    """A linear head on frozen features: class-balanced cross-entropy, full-batch Adam (the paper
    also balances the classes)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        head = nn.Linear(features.shape[1], num_classes).to(features.device)
    counts = torch.bincount(labels, minlength=num_classes).clamp(min=1).float()
    loss_fn = nn.CrossEntropyLoss(weight=(counts.sum() / (num_classes * counts)).to(features.device))
    optimizer = torch.optim.Adam(head.parameters(), lr=settings.lr, weight_decay=1e-4)
    with torch.enable_grad():
        for _ in range(settings.epochs):
            optimizer.zero_grad()
            loss_fn(head(features), labels).backward()
            optimizer.step()
    return head.eval()


def task2vec_embedding(network: nn.Module, items: list[dict], labels: dict[str, int], num_classes: int,
                       features: dict[str, torch.Tensor], image_size: int, in_channels: int,
                       settings: Task2VecSettings = Task2VecSettings(), seed: int = 0,
                       device: str = "cpu") -> np.ndarray:
    """Task2Vec embedding of one labelled cohort with ``network``'s frozen encoder as the probe:
    a head fitted on the cached ``features`` of the labelled items, then :func:`fisher_diagonal`
    of :func:`probe_weights` on at most ``settings.max_items`` images, :func:`filterwise`."""
    ids = [i["item_id"] for i in items if i["item_id"] in labels]
    x = torch.stack([features[i] for i in ids]).float().to(device)
    y = torch.tensor([labels[i] for i in ids], dtype=torch.long, device=device)
    head = _fit_head(x, y, num_classes, settings, seed)
    chosen = set(_balanced_subset(ids, labels, settings.max_items, np.random.default_rng(seed)))
    subset = [i for i in items if i["item_id"] in chosen]
    was_training = network.training
    network.to(device).eval()  # BatchNorm on its running statistics: one image at a time
    transform = classification_transforms(image_size, in_channels, network.preprocessing, augment=False,
                                          views=network.views, fusion=network.fusion)
    loader = DataLoader(Dataset(subset, transform), batch_size=1, shuffle=False)
    weights = probe_weights(network)
    try:
        with _gradients_on(weights), torch.enable_grad():
            sampled = torch.Generator().manual_seed(seed) if num_classes > EXACT_FISHER_MAX_CLASSES else None
            fisher = fisher_diagonal(lambda image: head(network.features(image)),
                                     (batch["image"].to(device) for batch in loader), weights, sampled)
    finally:
        network.train(was_training)
    return filterwise(fisher)


def _cohort(source: CohortSource, network, image_size: int, in_channels: int, cache_dir: Path,
            device: str) -> tuple[list[dict], dict[str, torch.Tensor], np.ndarray, np.ndarray]:
    """A cohort's items, their cached features (by item and as a matrix) and intensity statistics."""
    items = manifest_items(source.manifest, source.modalities)
    feats = cached_features(network, items, image_size, in_channels, cache_dir, device)
    loader = DataLoader(Dataset(items, Compose(deterministic_transforms(image_size, in_channels))), batch_size=32)
    images = [img.numpy() for batch in loader for img in batch["image"]]
    return items, feats, np.stack([feats[i["item_id"]].numpy() for i in items]), intensity_statistics(images)


def _task2vec_or_reason(source: CohortSource, items: list[dict], feats: dict[str, torch.Tensor], network,
                        image_size: int, in_channels: int, settings: Task2VecSettings, seed: int,
                        device: str) -> tuple[np.ndarray | None, str]:
    """A cohort's Task2Vec embedding, or None and why there is none (no label column, one class)."""
    if source.label is None:
        return None, "no label column (Task2Vec compares labelled tasks)"
    labels, classes = task_labels(source.manifest, items, source.label, source.classes)
    present = {labels[i] for i in labels}
    if len(present) < 2:
        return None, f"label column {source.label!r} has {len(present)} class(es) among its images: no task"
    return task2vec_embedding(network, items, labels, len(classes), feats, image_size, in_channels, settings,
                              seed, device), ""


def dataset_similarity(source: str | os.PathLike, target: str | os.PathLike, encoder: str = "resnet18",
                       weights: str = "scratch", image_size: int = 128, in_channels: int = 1,
                       source_modalities: list[str] | None = None, target_modalities: list[str] | None = None,
                       cache_dir: str | os.PathLike | None = None, device: str = "cpu", seed: int = 0,
                       source_label: str | None = None, target_label: str | None = None,
                       task2vec: Task2VecSettings | None = Task2VecSettings()) -> Similarity:
    """Distances between two ingested cohorts (manifest files or folders) under one fixed encoder;
    the Task2Vec distance too when both label columns are given (and ``task2vec`` is not None).
    With ``weights="scratch"`` the random encoder is seeded, so distances are reproducible."""
    return dataset_similarities({"source": CohortSource(source, source_modalities, source_label)},
                                CohortSource(target, target_modalities, target_label), encoder, weights, image_size,
                                in_channels, cache_dir=cache_dir, device=device, seed=seed,
                                task2vec=task2vec)["source"]


def _as_source(value: CohortSource | tuple | str | os.PathLike) -> CohortSource:
    """A :class:`CohortSource` from one, a ``(cohort, modalities)`` pair (the older form) or a path."""
    if isinstance(value, CohortSource):
        return value
    if isinstance(value, tuple):
        return CohortSource(*value)
    return CohortSource(value)


def dataset_similarities(sources: dict[str, CohortSource | tuple[str | os.PathLike, list[str] | None]],
                         target: CohortSource | str | os.PathLike, encoder: str = "resnet18",
                         weights: str = "scratch", image_size: int = 128, in_channels: int = 1,
                         target_modalities: list[str] | None = None, cache_dir: str | os.PathLike | None = None,
                         device: str = "cpu", seed: int = 0,
                         task2vec: Task2VecSettings | None = Task2VecSettings()) -> dict[str, Similarity]:
    """:func:`dataset_similarity` of several sources (name → :class:`CohortSource`, or (cohort,
    modalities)) to one target: one encoder, and the target's features, intensity statistics and
    Task2Vec embedding computed once. Task2Vec needs the target's and a source's label column
    (``task2vec=None`` skips it); ``target_modalities`` applies when ``target`` is a path."""
    torch.manual_seed(seed)
    network = create_classifier(encoder, weights, num_classes=2, in_channels=in_channels, freeze="all").to(device)
    target_source = _as_source(target)
    if not isinstance(target, CohortSource) and target_modalities is not None:
        target_source = CohortSource(target_source.manifest, target_modalities)
    target_path = Path(target_source.manifest)
    target_dir = target_path if target_path.is_dir() else target_path.parent
    cache = Path(cache_dir) if cache_dir else target_dir.resolve() / ".medxfer" / "features"
    b_items, b_feats, fb, ib = _cohort(target_source, network, image_size, in_channels, cache, device)
    embed_b, why_b = (None, "off (task2vec: false)") if task2vec is None else _task2vec_or_reason(
        target_source, b_items, b_feats, network, image_size, in_channels, task2vec, seed, device)
    out = {}
    for name, value in sources.items():
        source = _as_source(value)
        a_items, a_feats, fa, ia = _cohort(source, network, image_size, in_channels, cache, device)
        distance, note = None, (why_b if task2vec is None else f"target: {why_b}")
        if embed_b is not None:
            embed_a, why_a = _task2vec_or_reason(source, a_items, a_feats, network, image_size, in_channels,
                                                 task2vec, seed, device)
            distance, note = (normalized_cosine_distance(embed_a, embed_b), "") if embed_a is not None \
                else (None, f"source: {why_a}")
        out[name] = Similarity(frechet=frechet_distance(fa, fb), mmd2=mmd2_rbf(fa, fb),
                               intensity=intensity_distance(ia, ib), n_source=len(fa), n_target=len(fb),
                               task2vec=distance, task2vec_note=note)
    return out


def task2vec_settings(settings: dict[str, Any]) -> Task2VecSettings | None:
    """The :class:`Task2VecSettings` of a spec's similarity record (its ``task2vec``: a mapping, or
    None / absent when off)."""
    value = settings.get("task2vec")
    if not value:
        return None
    return Task2VecSettings(**{k: v for k, v in value.items() if k in Task2VecSettings.__dataclass_fields__})


def study_similarity(spec, device: str = "cpu") -> dict:
    """Distances of each source cohort of ``spec.similarity`` to the study's cohort, as the
    ``similarity.json`` record the report correlates with the transfer scores. Task2Vec (when the
    settings have it) uses the study's label column and classes, and each source's ``label`` (the
    pretraining stages' label columns; ``similarity.sources`` only where ``task2vec.labels`` names
    one): a source without one, or a segmentation study, gets ``task2vec: null`` and a
    ``task2vec_note``."""
    settings = spec.similarity
    t2v = task2vec_settings(settings)
    out = {k: settings[k] for k in ("encoder", "weights", "image_size", "in_channels")}
    out["task2vec"] = None if t2v is None else {**asdict(t2v), "estimator": TASK2VEC_ESTIMATOR,
                                                "distance": "normalized cosine"}
    classification = getattr(spec, "task", "classification") == "classification"
    target = CohortSource(spec.manifest, spec.data.get("modalities"), spec.label if classification else None,
                          spec.data.get("classes"))
    sims = dataset_similarities({name: CohortSource(source["manifest"], source.get("modalities"),
                                                    source.get("label"), source.get("classes"))
                                 for name, source in sorted(settings["sources"].items())},
                                target, encoder=settings["encoder"], weights=settings["weights"],
                                image_size=settings["image_size"], in_channels=settings["in_channels"],
                                cache_dir=spec.train.get("feature_cache_dir"), device=device, task2vec=t2v)
    if t2v is not None and not classification:
        sims = {name: Similarity(**{**asdict(sim), "task2vec_note": "a segmentation study: Task2Vec compares "
                                    "classification tasks (labels per image)"}) for name, sim in sims.items()}
    out["target"] = {"n": next(iter(sims.values())).n_target}
    out["sources"] = {name: {"frechet": sim.frechet, "mmd2": sim.mmd2, "intensity": sim.intensity, "n": sim.n_source,
                             "task2vec": sim.task2vec, **({"task2vec_note": sim.task2vec_note}
                                                          if sim.task2vec_note else {})}
                      for name, sim in sims.items()}
    return out


def similarity_hash(spec) -> str:
    """What the similarity record depends on: its settings (Task2Vec's included) and the cohorts'
    manifests' content, and with Task2Vec on, the label columns and classes."""
    settings = dict(spec.similarity)
    labelled = task2vec_settings(settings) is not None
    blob = {"settings": {k: v for k, v in settings.items() if k != "sources"},
            "target": sha256_file(spec.manifest), "modalities": spec.data.get("modalities"),
            "sources": {n: [sha256_file(s["manifest"]), s.get("modalities"),
                            *([s.get("label"), s.get("classes")] if labelled else [])]
                        for n, s in settings["sources"].items()}}
    if labelled:
        blob["target_task"] = [spec.label, spec.data.get("classes"), getattr(spec, "task", "classification")]
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
