"""Weights sources: file:, run: (registered by medxfer.engine), imported names and the scheme registry."""
from __future__ import annotations

import hashlib
import json
import os

import pytest
import torch

from medxfer.models import WeightsError, create_encoder, import_weights, list_weights, save_checkpoint
from medxfer.models.preprocessing import IMAGENET
from medxfer.models.weights import (ResolvedWeights, WeightsRecord, register_source_scheme, resolve_weights,
                                    source_schemes, sources)
from medxfer.tracking.layout import CHECKPOINT_ARTIFACT

from .conftest import log_checkpoint_run
from .numerics import random_images, rel_err
from .torchvision_reference import resnet_forward, resnet_state_dict


def test_file_source_converts_on_the_fly(home, tmp_path):
    state = resnet_state_dict(18, seed=8)
    torch.save(state, tmp_path / "r18.pth")
    encoder = create_encoder("resnet18", f"file:{tmp_path / 'r18.pth'}").eval()
    assert encoder.weights_record.name == "file:r18.pth"
    assert str(tmp_path) not in json.dumps(encoder.weights_record.to_dict())  # base name only
    x = random_images()
    with torch.no_grad():
        assert rel_err(encoder(x)[-1], resnet_forward(state, x, 18)) < 1e-5
    assert list_weights() == []  # file: sources are not stored


def test_file_source_records_the_sha256_of_the_bytes_it_loaded(home, tmp_path, monkeypatch):
    """The file is replaced while it is being loaded: the record's sha256 (logged as the run's
    weights.sha256) is that of the weights in the encoder, not of the file's new content."""
    old, new = resnet_state_dict(18, seed=8), resnet_state_dict(18, seed=9)
    path = tmp_path / "w.pt"
    torch.save(old, path)
    old_sha = hashlib.sha256(path.read_bytes()).hexdigest()
    convert = sources.convert_weights

    def convert_then_replace(src, arch, *args):
        conv = convert(src, arch, *args)
        torch.save(new, tmp_path / "incoming.pt")
        os.replace(tmp_path / "incoming.pt", path)  # another process swaps the file meanwhile
        return conv

    monkeypatch.setattr(sources, "convert_weights", convert_then_replace)
    encoder = create_encoder("resnet18", f"file:{path}")
    assert hashlib.sha256(path.read_bytes()).hexdigest() != old_sha
    assert encoder.weights_record.sha256 == old_sha
    assert torch.equal(encoder.conv1.weight, old["conv1.weight"])
    sources.check_weights_sha256(encoder.weights_record, old_sha, f"file:{path}")  # the pin holds


def test_pinned_weights_refuse_other_bytes(home, tmp_path):
    """A study pins each file: and imported source's sha256 when it plans a run; weights that load
    as other bytes (file replaced, name re-imported with --replace) are refused in one line."""
    torch.save(resnet_state_dict(18, seed=1), tmp_path / "w.pt")
    planned = hashlib.sha256((tmp_path / "w.pt").read_bytes()).hexdigest()
    torch.save(resnet_state_dict(18, seed=2), tmp_path / "w.pt")
    encoder = create_encoder("resnet18", f"file:{tmp_path / 'w.pt'}")
    with pytest.raises(WeightsError) as err:
        sources.check_weights_sha256(encoder.weights_record, planned, f"file:{tmp_path / 'w.pt'}")
    message = str(err.value)
    assert message.startswith("weights file:w.pt: the file changed since the study was planned")
    assert f"sha256 {planned[:12]}… expected, {encoder.weights_record.sha256[:12]}… found" in message
    assert str(tmp_path) not in message and "\n" not in message

    first = import_weights(tmp_path / "w.pt", "mine", "resnet18")
    sources.check_weights_sha256(create_encoder("resnet18", "mine").weights_record, f"sha256:{first.sha256}", "mine")
    torch.save(resnet_state_dict(18, seed=3), tmp_path / "other.pt")
    import_weights(tmp_path / "other.pt", "mine", "resnet18", replace=True)
    with pytest.raises(WeightsError, match=r"weights mine: the name was re-imported since the study was planned "
                                           rf"\(sha256 {first.sha256[:12]}… expected"):
        sources.check_weights_sha256(create_encoder("resnet18", "mine").weights_record, first.sha256, "mine")
    sources.check_weights_sha256(create_encoder("resnet18", "scratch").weights_record, None, "scratch")


def test_run_source_loads_the_checkpoint_of_an_mlflow_run(home, tmp_path, mlflow_store):
    trained = create_encoder("resnet18", "scratch")
    ckpt = save_checkpoint(tmp_path / "ckpt" / "medxfer_checkpoint.pt", trained,
                           provenance={"experiment": "medxfer/pretext"})
    assert CHECKPOINT_ARTIFACT.endswith(ckpt.name)
    run_id = log_checkpoint_run(mlflow_store, ckpt, tmp_path)
    encoder = create_encoder("resnet18", f"run:{run_id}")
    assert encoder.weights_record.provenance["run_id"] == run_id
    assert encoder.weights_record.provenance["initial_weights"] == "scratch"  # the chain is recorded
    assert encoder.preprocessing == trained.preprocessing
    assert torch.equal(encoder.layer4[1].conv2.weight, trained.layer4[1].conv2.weight)
    with pytest.raises(WeightsError, match="no such MLflow run"):
        create_encoder("resnet18", "run:0123456789abcdef0123456789abcdef")
    with pytest.raises(WeightsError, match="holds a resnet18 encoder, not resnet34"):
        create_encoder("resnet34", f"run:{run_id}")


def test_unknown_source_lists_the_known_ones(home, tmp_path):
    torch.save(resnet_state_dict(18), tmp_path / "r18.pth")
    import_weights(tmp_path / "r18.pth", "imagenet", "resnet18")
    with pytest.raises(WeightsError) as err:
        create_encoder("resnet18", "radimagenet")
    message = str(err.value)
    assert "unknown weights source 'radimagenet'" in message
    for known in ("scratch", "file:PATH", "run:RUN_ID", "imagenet (resnet18)"):
        assert known in message
    with pytest.raises(WeightsError, match="exist for resnet18, not for resnet34"):
        create_encoder("resnet34", "imagenet")
    with pytest.raises(ValueError, match="unknown encoder 'resnet51'; known: resnet18"):
        create_encoder("resnet51", "scratch")



# ----------------------------------------------------------------------------- the scheme registry

@pytest.fixture
def schemes(monkeypatch):
    """The source-scheme registry, restored after the test."""
    monkeypatch.setattr(sources, "_SCHEMES", dict(sources._SCHEMES))
    return sources._SCHEMES


def test_run_source_without_the_engine_names_the_module_to_import(home, schemes):
    del schemes["run"]  # as in a process that imported medxfer.models but not medxfer.engine
    with pytest.raises(WeightsError, match=r"weights source 'run:abc': the run: scheme is provided by "
                                           r"medxfer.engine \(import medxfer.engine\)"):
        create_encoder("resnet18", "run:abc")


def test_unregistered_scheme_is_an_unknown_source(home, schemes):
    with pytest.raises(WeightsError, match=r"unknown weights source 'hub:resnet'; known sources: scratch, file:PATH"):
        create_encoder("resnet18", "hub:resnet")


def test_a_registered_scheme_resolves_its_sources(home, schemes):
    state = resnet_state_dict(18, seed=9)
    seen = []

    def resolve_memory(reference: str, arch: str) -> ResolvedWeights:
        seen.append((reference, arch))
        record = WeightsRecord(name=f"mem:{reference}", arch=arch, format="torchvision",
                               preprocessing=IMAGENET.to_dict())
        return ResolvedWeights(record, {k: v for k, v in state.items() if not k.startswith("fc.")})

    register_source_scheme("mem", resolve_memory, usage="mem:KEY")
    register_source_scheme("mem", resolve_memory)  # the same resolver again: harmless
    assert "mem" in source_schemes()
    encoder = create_encoder("resnet18", "mem:r18").eval()
    assert seen == [("r18", "resnet18")] and encoder.weights_record.name == "mem:r18"
    x = random_images()
    with torch.no_grad():
        assert rel_err(encoder(x)[-1], resnet_forward(state, x, 18)) < 1e-5
    with pytest.raises(WeightsError, match="known sources: scratch, file:PATH, run:RUN_ID, mem:KEY"):
        resolve_weights("nothing-here", "resnet18")
    with pytest.raises(ValueError, match="already registered"):
        register_source_scheme("mem", lambda reference, arch: None)
    with pytest.raises(ValueError, match="invalid weights source scheme"):
        register_source_scheme("Bad Scheme", resolve_memory)
