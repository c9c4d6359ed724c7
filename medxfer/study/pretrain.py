"""Pretraining stages of a study at run time: what a stage's run is (its hash) and the chain it builds on.

A spec declares stages under ``pretrain`` (:mod:`.spec` reads and validates them into
:class:`~medxfer.study.spec.PretrainStage`), and the grid names them as weights sources:

```yaml
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

from typing import Callable

from ..core.hashing import sha256_file, stable_digest
from .spec import PretrainStage

STAGE_HASH_LENGTH = 20  # a stage run's config_hash tag, as stored


def stage_hash(stages: dict[str, PretrainStage], name: str, encoder: str,
               weights_identity: Callable[[str, str], str]) -> str:
    """What a stage's run for ``encoder`` is: its cohort's content, label, fold, settings and the
    identity of where it starts (an earlier stage's hash, recursively; ``weights_identity(source,
    encoder)`` otherwise)."""
    stage = stages[name]
    start = (f"stage:{stage_hash(stages, stage.start, encoder, weights_identity)}" if stage.start in stages
             else weights_identity(stage.start, encoder))
    blob = {"stage": name, "encoder": encoder, "manifest_sha256": sha256_file(stage.manifest), "label": stage.label,
            "fold": stage.fold, "data": stage.data, "train": stage.train, "start": start}
    return stable_digest(blob, STAGE_HASH_LENGTH)


def chain(stages: dict[str, PretrainStage], name: str) -> list[str]:
    """The sources a stage builds on, first to last: ``["imagenet", "density", "target-ready"]``."""
    start = stages[name].start
    return (chain(stages, start) if start in stages else [start]) + [name]
