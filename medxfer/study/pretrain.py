"""Pretraining stages of a study: self-pretraining and incremental chains as configuration.

```yaml
pretrain:
  - name: density              # a weights source name the grid can use
    data: {manifest: density/manifest.csv, label: density, fold: 0, modalities: [MG]}
    from: imagenet             # start: scratch, an imported name, file:PATH, run:ID or an earlier stage
    train: {epochs: 20}        # bundle overrides (image_size, in_channels, batch_size default to the study's)
grid:
  weights: [imagenet, density, scratch]   # "density" = ImageNet → density → this target
```

For every encoder of the grid that uses a stage, the stage is one classification bundle run
(``pretrain/<stage>/<encoder>`` in the study's experiment, tag ``medxfer.role=pretrain``) and the
grid's runs use its checkpoint as ``run:<id>``. Stages resume like grid runs, by a hash of what
they are (their cohort's content, label, fold, settings, their start's identity — recursively
for chains), and their run records where they started (``medxfer.chain``: ``imagenet → density``).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

STAGE_KEYS = {"name", "data", "from", "train"}
STAGE_DATA_KEYS = {"manifest", "label", "fold", "modalities", "classes"}
# Settings a stage takes from the study's `train` unless it sets them: the input must match.
SHARED_SETTINGS = ("image_size", "in_channels", "batch_size")


@dataclass(frozen=True)
class PretrainStage:
    """One pretraining stage of a study spec."""

    name: str
    manifest: Path
    label: str
    fold: int = 0
    start: str = "scratch"
    train: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)  # modalities, classes


def parse_stages(raw: Any, resolve_manifest: Callable[[str], Path], study_train: dict[str, Any],
                 error: type[Exception]) -> list[PretrainStage]:
    """Validate the spec's ``pretrain`` list; raises ``error`` with the reason."""
    from ..models.weights import _NAME_RE  # one rule for what a weights name may be
    from .spec import yaml_number  # one rule for YAML numbers (spec imports this module)

    if raw in (None, []):
        return []
    if not isinstance(raw, list):
        raise error("pretrain is a list of stages, each with name, data and optionally from and train")
    stages: list[PretrainStage] = []
    for i, entry in enumerate(raw):
        if not isinstance(entry, dict):
            raise error(f"pretrain[{i}] is not a mapping")
        unknown = set(entry) - STAGE_KEYS
        if unknown:
            raise error(f"pretrain[{i}]: unknown keys {sorted(unknown)} (allowed: {', '.join(sorted(STAGE_KEYS))})")
        name = str(entry.get("name") or "")
        if not _NAME_RE.match(name) or name == "scratch" or any(s.name == name for s in stages):
            raise error(f"pretrain[{i}]: name {name!r} must be a new weights name (letters, digits, . _ -)")
        data = dict(entry.get("data") or {})
        unknown = set(data) - STAGE_DATA_KEYS
        if unknown or not data.get("manifest") or not data.get("label"):
            raise error(f"pretrain {name}: data needs manifest and label (allowed: {', '.join(sorted(STAGE_DATA_KEYS))})")
        start = str(entry.get("from") or "scratch")
        if not (start == "scratch" or ":" in start or _NAME_RE.match(start)):
            raise error(f"pretrain {name}: from {start!r} is not a weights source")
        later = [s["name"] for s in raw[i + 1:] if isinstance(s, dict)]
        if start in later or start == name:
            raise error(f"pretrain {name}: from {start!r} must be an earlier stage (no cycles)")
        train = {k: yaml_number(v) for k, v in dict(entry.get("train") or {}).items()}  # lr: 1e-3 as in the study
        bad = sorted(set(train) & {"manifest", "label", "fold", "weights", "encoder", "experiment", "run_name"})
        if bad:
            raise error(f"pretrain {name}: train may not set {bad}")
        for key in SHARED_SETTINGS:
            if key in study_train:
                train.setdefault(key, study_train[key])
        stages.append(PretrainStage(
            name=name, manifest=resolve_manifest(str(data.pop("manifest"))), label=str(data.pop("label")),
            fold=int(data.pop("fold", 0)), start=start, train=train, data=data))
    return stages


def stage_hash(stages: dict[str, PretrainStage], name: str, encoder: str,
               weights_identity: Callable[[str, str], str]) -> str:
    """What a stage's run for ``encoder`` is: its cohort's content, label, fold, settings and the
    identity of where it starts (an earlier stage's hash, recursively)."""
    from ..models.weights import sha256_file

    stage = stages[name]
    start = (f"stage:{stage_hash(stages, stage.start, encoder, weights_identity)}" if stage.start in stages
             else weights_identity(stage.start, encoder))
    blob = {"stage": name, "encoder": encoder, "manifest_sha256": sha256_file(stage.manifest), "label": stage.label,
            "fold": stage.fold, "data": stage.data, "train": stage.train, "start": start}
    return hashlib.sha256(json.dumps(blob, sort_keys=True, default=str).encode()).hexdigest()[:20]


def chain(stages: dict[str, PretrainStage], name: str) -> list[str]:
    """The sources a stage builds on, first to last: ``["imagenet", "density", "target-ready"]``."""
    start = stages[name].start
    return (chain(stages, start) if start in stages else [start]) + [name]
