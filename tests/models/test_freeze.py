"""Freeze policies: what trains, BatchNorm statistics under ``all``, optimizer groups."""
from __future__ import annotations

import pytest
import torch

from medxfer.models import apply_freeze, create_classifier, create_segmenter, parameter_groups, parse_policy


def _step(model, x, y, lr=0.1):
    groups = parameter_groups(model, lr=lr)
    opt = torch.optim.SGD(groups, lr=lr)
    model.train()
    loss = torch.nn.functional.cross_entropy(model(x), y)
    opt.zero_grad()
    loss.backward()
    opt.step()


def _snapshot(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_freeze_all_keeps_encoder_and_its_batchnorm_statistics_fixed():
    model = create_classifier("resnet18", num_classes=2, freeze="all")
    assert model.freeze_summary.trainable_parameters == 0
    before = _snapshot(model.encoder)
    head_before = model.head.weight.detach().clone()
    x, y = torch.randn(4, 3, 64, 64) * 3 + 1, torch.tensor([0, 1, 0, 1])
    _step(model, x, y)
    after = model.encoder.state_dict()
    for key, value in before.items():  # running_mean/var included: BN stayed in eval mode
        assert torch.equal(after[key], value), key
    assert not torch.equal(model.head.weight, head_before)
    model.train()
    assert not model.encoder.bn1.training and model.head.training


def test_top_k_trains_only_the_last_k_blocks():
    model = create_classifier("resnet18", num_classes=2, freeze="top:2")
    assert model.freeze_summary.trainable_blocks == ("layer4.0", "layer4.1")
    before = _snapshot(model.encoder)
    _step(model, torch.randn(4, 3, 64, 64), torch.tensor([0, 1, 0, 1]))
    after = model.encoder.state_dict()
    changed = {k.split(".")[0] + "." + k.split(".")[1] if k.startswith("layer") else k.split(".")[0]
               for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"layer4.0", "layer4.1"}
    assert model.encoder.layer3[1].bn2.training is False and model.encoder.layer4[1].bn2.training is True


def test_policies_apply_to_the_unet_encoder_and_can_be_changed():
    net = create_segmenter("mobilenet_v1_025", in_channels=1, out_channels=2, freeze="all")
    assert all(not p.requires_grad for p in net.encoder.parameters())
    assert all(p.requires_grad for p in net.decoder.parameters())
    summary = apply_freeze(net.encoder, "none")
    assert summary.frozen_parameters == 0 and all(p.requires_grad for p in net.encoder.parameters())
    net.train()
    assert all(m.training for m in net.encoder.modules())
    summary = apply_freeze(net.encoder, "top:100")  # more blocks than the encoder has: nothing frozen
    assert summary.frozen_blocks == ()


def test_parameter_groups_give_the_encoder_its_own_learning_rate():
    model = create_classifier("resnet18", num_classes=3, freeze="top:3")
    groups = parameter_groups(model, lr=1e-3, encoder_lr=1e-4)
    by_name = {g["name"]: g for g in groups}
    assert by_name["head"]["lr"] == 1e-3 and by_name["encoder"]["lr"] == 1e-4
    assert {id(p) for p in by_name["head"]["params"]} == {id(p) for p in model.head.parameters()}
    assert sum(p.numel() for p in by_name["encoder"]["params"]) == model.freeze_summary.trainable_parameters
    frozen = create_classifier("resnet18", num_classes=3, freeze="all")
    assert [g["name"] for g in parameter_groups(frozen, lr=1e-3)] == ["head"]


@pytest.mark.parametrize("bad", ["some", "top:0", "top:x", "top:-1", ""])
def test_unknown_policy_is_an_error(bad):
    with pytest.raises(ValueError, match="unknown freeze policy"):
        parse_policy(bad)


def test_frozen_blocks_stay_in_eval_after_syncbatchnorm_conversion():
    """DDP setups convert BatchNorm to SyncBatchNorm, which replaces the modules."""
    model = create_classifier("resnet18", num_classes=2, freeze="top:1")
    model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model.train()
    assert isinstance(model.encoder.bn1, torch.nn.SyncBatchNorm) and not model.encoder.bn1.training
    assert not model.encoder.layer4[0].bn1.training and model.encoder.layer4[1].bn1.training


def test_frozen_encoder_is_a_fixed_function_in_train_mode():
    """No drop-connect or dropout inside frozen blocks (EfficientNet), so features can be cached."""
    model = create_classifier("efficientnet-b0", num_classes=2, freeze="all").train()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model.features(x), model.features(x))
    apply_freeze(model.encoder, "none")
    model.train()
    with torch.no_grad():
        assert not torch.equal(model.features(x), model.features(x))  # drop-connect is back
