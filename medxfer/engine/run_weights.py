"""The ``run:RUN_ID`` weights source: the checkpoint an earlier medxfer run logged to MLflow.

Self-pretraining and incremental chains start from it. Models know nothing of MLflow: importing
this module (``import medxfer.engine`` does) registers the ``run`` scheme with
:func:`medxfer.models.weights.register_source_scheme`.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

from ..core.hashing import sha256_file
from ..models.weights import (ResolvedWeights, WeightsError, conversion_record, convert_weights,
                              register_source_scheme)
from ..tracking.layout import CHECKPOINT_ARTIFACT
from ..tracking.store import RunNotFound, download_run_artifact

RUN_SCHEME = "run"


def resolve_run_weights(run_id: str, arch: str) -> ResolvedWeights:
    """The ``arch`` encoder of the medxfer checkpoint run ``run_id`` logged (:data:`CHECKPOINT_ARTIFACT`),
    downloaded from the tracking store of :mod:`medxfer.tracking`; its sha256 and the run id are recorded."""
    with tempfile.TemporaryDirectory(prefix="medxfer-run-") as tmp:
        try:
            local = download_run_artifact(run_id, CHECKPOINT_ARTIFACT, tmp)
        except RunNotFound as exc:
            raise WeightsError(str(exc)) from None
        try:
            conv = convert_weights(local, arch, "medxfer")
        except WeightsError as exc:
            raise WeightsError(f"run:{run_id}: {str(exc).replace(str(local), CHECKPOINT_ARTIFACT)}") from None
        sha = sha256_file(local)
    record = conversion_record(f"{RUN_SCHEME}:{run_id}", arch, conv, sha, Path(CHECKPOINT_ARTIFACT).name,
                               provenance={"run_id": run_id})
    return ResolvedWeights(record, conv.state_dict)


register_source_scheme(RUN_SCHEME, resolve_run_weights, usage="run:RUN_ID")
