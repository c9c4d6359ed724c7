"""The on-disk weights registry: sha256 checks and replacing an import."""
from __future__ import annotations

import pytest
import torch

from medxfer.models import WeightsError, create_encoder, import_weights, list_weights

from .torchvision_reference import resnet_state_dict


def test_sha256_mismatch_is_an_error(home, tmp_path):
    torch.save(resnet_state_dict(18), tmp_path / "r18.pth")
    with pytest.raises(WeightsError, match="sha256 mismatch: expected 00ff"):
        import_weights(tmp_path / "r18.pth", "imagenet", "resnet18", expected_sha256="00ff" * 16)
    record = import_weights(tmp_path / "r18.pth", "imagenet", "resnet18")
    stored = home / "weights" / record.file
    state = torch.load(stored, weights_only=True)
    state["conv1.weight"] += 1e-3
    torch.save(state, stored)
    with pytest.raises(WeightsError, match=r"sha256 mismatch: .*\(the file changed after import\)"):
        create_encoder("resnet18", "imagenet")


def test_reimport_needs_replace(home, tmp_path):
    torch.save(resnet_state_dict(18, seed=1), tmp_path / "a.pth")
    torch.save(resnet_state_dict(18, seed=2), tmp_path / "b.pth")
    first = import_weights(tmp_path / "a.pth", "imagenet", "resnet18")
    with pytest.raises(WeightsError, match="already exist"):
        import_weights(tmp_path / "b.pth", "imagenet", "resnet18")
    second = import_weights(tmp_path / "b.pth", "imagenet", "resnet18", replace=True)
    assert first.source_sha256 != second.source_sha256
    assert [r.source_file for r in list_weights()] == ["b.pth"]

