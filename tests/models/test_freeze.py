"""Freeze policies: what trains, BatchNorm statistics under ``all``, optimizer groups."""
from __future__ import annotations

import functools
import logging
import os

os.environ.setdefault("KERAS_BACKEND", "torch")  # the Keras reference models (keras imported in a test)

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from medxfer.models import (ARCHS, apply_freeze, build_encoder, create_classifier, create_segmenter,  # noqa: E402
                            parameter_groups, parse_policy)
from medxfer.study.checks import freeze_problem  # noqa: E402


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


# ----------------------------------------------------------------------------- top_layers:K (Keras layer counting)

def test_parse_policy_reads_top_layers():
    assert parse_policy("top_layers:10") == ("top_layers", 10)
    assert parse_policy(" TOP_LAYERS:3 ") == ("top_layers", 3)


@pytest.mark.parametrize("bad", ["top_layers:0", "top_layers:", "top_layers:x", "top_layer:3", "layers:3"])
def test_malformed_top_layers_is_an_error_naming_both_forms(bad):
    with pytest.raises(ValueError, match=r"unknown freeze policy .*top:K .*top_layers:K"):
        parse_policy(bad)


def test_top_layers_on_an_encoder_without_keras_layers_points_to_top_k():
    with pytest.raises(ValueError, match=r"resnet50 is not one .*resnet50_keras.*densenet121.*top:K"):
        apply_freeze(build_encoder("resnet50"), "top_layers:10")


def test_study_spec_check_accepts_top_layers_and_refuses_it_for_a_torchvision_encoder():
    assert freeze_problem("top_layers:10") is None
    assert freeze_problem("top_layers:10", "densenet121") is None
    assert "unknown freeze policy 'top_layers:0'" in freeze_problem("top_layers:0")
    assert "freeze resnet18 by blocks with top:K" in freeze_problem("top_layers:10", "resnet18")
    assert freeze_problem("top:10", "resnet18") is None


def test_top_layers_bn_of_a_frozen_conv_trains_and_the_frozen_ones_stay_in_eval():
    """top_layers:14 on ResNet50 (Keras): avg_pool, conv5_block3 (10 layers) and conv5_block2_out, _add,
    _3_bn train; conv5_block2_3_conv (layer4.1.conv3) and everything before it are frozen."""
    model = create_classifier("resnet50_keras", num_classes=2, freeze="top_layers:14")
    block2 = model.encoder.layer4[1]
    assert not block2.conv3.weight.requires_grad and block2.bn3.weight.requires_grad
    before = _snapshot(model.encoder)
    _step(model, torch.randn(2, 3, 64, 64), torch.tensor([0, 1]))
    after = model.encoder.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert {"layer4.1.bn3.running_mean", "layer4.1.bn3.weight", "layer4.2.conv1.weight"} <= changed
    assert not changed & {"layer4.1.conv3.weight", "layer4.1.bn2.running_mean", "layer4.1.bn2.weight", "bn1.weight"}
    assert model.freeze_summary.trainable_layers[-1] == "avg_pool" and len(model.freeze_summary.trainable_layers) == 14
    assert model.freeze_summary.trainable_blocks == ("layer4.1", "layer4.2")  # layer4.1 in part


def test_top_k_that_leaves_everything_trainable_warns_that_it_is_none(caplog):
    with caplog.at_level(logging.WARNING, logger="medxfer.models.freeze"):
        summary = apply_freeze(build_encoder("resnet18"), "top:99")
    expected = "freeze top:99 on resnet18 leaves all 9 blocks trainable: it is the same as freeze: none"
    assert summary.warning == expected and expected in caplog.text


def test_top_layers_beyond_the_network_warns_that_it_is_none(caplog):
    with caplog.at_level(logging.WARNING, logger="medxfer.models.freeze"):
        summary = apply_freeze(build_encoder("mobilenet_v1_025"), "top_layers:9999")
    assert summary.frozen_parameters == 0
    assert "leaves every layer with weights of its 87 Keras layers trainable: it is the same as freeze: none" \
        in summary.warning
    assert summary.warning in caplog.text


def test_top_layers_without_weights_warns_that_it_is_all(caplog):
    """The last two layers of MobileNet with pooling='avg' are a ReLU and the pooling: nothing trains."""
    encoder = build_encoder("mobilenet_v1_025")
    with caplog.at_level(logging.WARNING, logger="medxfer.models.freeze"):
        summary = apply_freeze(encoder, "top_layers:2")
    assert summary.trainable_parameters == 0
    assert summary.warning.endswith("its last 2 Keras layer(s), conv_pw_13_relu, global_average_pooling2d, hold no "
                                    "weights): it is the same as freeze: all")
    assert summary.warning in caplog.text
    encoder.train()
    assert not encoder.layers[12].pw_bn.training  # frozen BatchNorm: inference mode, as in Keras


def test_the_run_params_record_the_keras_layers_and_the_warning():
    """What a run logs (MLflow params stay short: a long Keras layer list is its ends and its length)."""
    summary = apply_freeze(build_encoder("resnet50_keras"), "top_layers:5")
    assert summary.params() == {
        "freeze.trainable_parameters": str(summary.trainable_parameters),
        "freeze.trainable_layers": ("conv5_block3_3_conv, conv5_block3_3_bn, conv5_block3_add, conv5_block3_out, "
                                    "avg_pool")}
    long = apply_freeze(build_encoder("mobilenet_v1_025"), "top_layers:30").params()
    assert long["freeze.trainable_layers"].endswith("… global_average_pooling2d (30 Keras layers)")
    assert "freeze.warning" not in long
    everything = apply_freeze(build_encoder("resnet18"), "top:99").params()
    assert everything["freeze.warning"].endswith("it is the same as freeze: none")
    assert "freeze.trainable_layers" not in everything


def test_policies_that_mean_what_they_say_do_not_warn(caplog):
    encoder = build_encoder("mobilenet_v1_025")
    with caplog.at_level(logging.WARNING, logger="medxfer.models.freeze"):
        for policy in ("none", "all", "top:2", "top_layers:10"):
            assert apply_freeze(encoder, policy).warning == ""
    assert caplog.text == ""


# the Keras-layout encoders with a Keras layer list (the inception archs once registered), and K values:
# 1 (only the pooling layer), 3, 10 (RadImageNet's unfreezetop10), 30, and one that reaches into an earlier
# block: its first frozen layer is a convolution whose BatchNorm trains
REACH = {"resnet50_keras": (14, "conv5_block2_3_conv", "conv5_block2_3_bn"),
         "densenet121": (14, "conv5_block15_1_conv", "conv5_block15_1_bn"),
         "mobilenet_v1_100": (9, "conv_pw_12", "conv_pw_12_bn")}
TOP_LAYERS_CASES = [(arch, k) for arch in ("resnet50_keras", "densenet121", "mobilenet_v1_100", "inception_v3",
                                           "inception_resnet_v2")
                    if arch in ARCHS for k in (1, 3, 10, 30, REACH.get(arch, (50,))[0])]


@functools.lru_cache(maxsize=None)
def _keras_base_model(arch: str):
    """The base model exactly as RadImageNet built it (include_top=False, pooling='avg'), fresh layer names."""
    keras = pytest.importorskip("keras")
    keras.backend.clear_session()
    spec = ARCHS[arch]
    options = {"alpha": spec.feature_channels[-1] / 1024} if spec.keras_application == "MobileNet" else {}
    return getattr(keras.applications, spec.keras_application)(weights=None, include_top=False, pooling="avg",
                                                               input_shape=(75, 75, 3), **options)


@pytest.fixture(scope="module", autouse=True)
def _release_keras_models():
    """The Keras reference models are built once per module and released after it (InceptionResNetV2: 54M)."""
    yield
    _keras_base_model.cache_clear()


@pytest.mark.parametrize("arch,k", TOP_LAYERS_CASES)
def test_top_layers_trains_as_many_parameters_as_keras_with_layers_before_the_last_k_frozen(arch, k):
    """``for layer in base_model.layers[:-K]: layer.trainable = False``, then Keras's trainable weights
    (BatchNorm gamma/beta; moving statistics are non-trainable) against PyTorch's ``requires_grad``."""
    model = _keras_base_model(arch)
    for layer in model.layers:
        layer.trainable = True
    for layer in model.layers[:-k]:
        layer.trainable = False
    keras_trainable = int(sum(np.prod(w.shape) for w in model.trainable_weights))
    summary = apply_freeze(build_encoder(arch), f"top_layers:{k}")
    assert summary.trainable_parameters == keras_trainable
    assert summary.trainable_layers == tuple(layer.name for layer in model.layers[-k:])
    if k == REACH.get(arch, (0,))[0]:
        _, conv, bn = REACH[arch]
        assert model.layers[-k - 1].name == conv and bn in summary.trainable_layers
