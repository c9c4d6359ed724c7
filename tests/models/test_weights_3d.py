"""3D weight files: MedicalNet ResNets, the SwinUNETR self-supervised Swin-ViT and medxfer 3D checkpoints.

Each test builds its file from a MONAI reference module configured as the published model and saves
it in the published layout (a training checkpoint ``{"state_dict": {"module.…": tensor}}``).
"""
from __future__ import annotations

import pickle

import pytest
import torch
from click.testing import CliRunner
from monai.networks.nets import DenseNet121
from monai.networks.nets.resnet import ResNetFeatures

from medxfer.cli import main
from medxfer.core.hashing import sha256_file
from medxfer.models import (WeightsError, build_encoder, convert_weights, create_encoder, import_weights,
                            save_checkpoint)
from medxfer.models.preprocessing import MEDICALNET, SWIN_SSL, Preprocessing
from medxfer.models.weights import detect_format


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _randomise_bn(module: torch.nn.Module, seed: int) -> None:
    """Non-trivial BatchNorm statistics, so eval-mode features depend on every buffer."""
    gen = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=gen) * 0.1)


def medicalnet_reference(depth: int, seed: int = 0) -> ResNetFeatures:
    """MONAI's ResNet in MedicalNet's configuration (``ResNetFeatures``: MedicalNet shortcut/bias per depth)."""
    torch.manual_seed(seed)
    net = ResNetFeatures(f"resnet{depth}", pretrained=False, spatial_dims=3, in_channels=1)
    _randomise_bn(net, seed)
    return net.eval()


def save_medicalnet(net: torch.nn.Module, path, head: bool = True):
    """MedicalNet's ``train.py`` checkpoint of a DataParallel model, with its ``conv_seg`` decoder."""
    state = {f"module.{k}": v for k, v in net.state_dict().items()}
    if head:
        state["module.conv_seg.0.weight"] = torch.randn(512, 32, 2, 2, 2)
        state["module.conv_seg.4.weight"] = torch.randn(2, 32, 1, 1, 1)
    torch.save({"ecpoch": 110, "batch_id": 0, "state_dict": state}, path)
    return path


def swin_reference(seed: int = 0):
    """MONAI's SwinUNETR as the SSL pretraining built it (1 channel, feature size 48)."""
    from monai.networks.nets import SwinUNETR

    torch.manual_seed(seed)
    return SwinUNETR(in_channels=1, out_channels=2, feature_size=48).eval()


def save_swin_ssl(swin_vit: torch.nn.Module, path, extra: dict | None = None, prefix: str = "module."):
    """``model_swinvit.pt``: the Swin-ViT's keys under ``module.``, MLP layers named ``fc1``/``fc2``."""
    state = {prefix + k.replace(".mlp.linear1.", ".mlp.fc1.").replace(".mlp.linear2.", ".mlp.fc2."): v
             for k, v in swin_vit.state_dict().items()}
    state.update(extra or {})
    torch.save({"epoch": 100, "state_dict": state}, path)
    return path


def _same_features(mine, reference):
    assert len(mine) == len(reference) == 5
    for a, b in zip(mine, reference):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


@pytest.mark.parametrize("depth", [10, 18])  # shortcut B (downsample conv + BN) and shortcut A (no parameters)
def test_medicalnet_checkpoint_imports_strictly_and_reproduces_the_reference(home, tmp_path, depth):
    reference = medicalnet_reference(depth, seed=depth)
    path = save_medicalnet(reference, tmp_path / f"resnet_{depth}.pth")
    assert detect_format(path) == "medicalnet"
    record = import_weights(path, "medicalnet", f"resnet{depth}_3d")
    assert record.format == "medicalnet"
    assert record.provenance["skipped_head"] == ["conv_seg.0.weight", "conv_seg.4.weight"]
    assert f"resnet_{depth}.pth" in record.provenance["published_file"]
    assert "Tencent/MedicalNet" in record.provenance["published_file"]
    assert record.source_sha256 == sha256_file(path) and len(record.sha256) == 64
    prep = record.preprocessing_record
    assert prep.mode == "medicalnet" and prep.intensity == "nonzero-zscore" and prep.mean == (0.0,)
    encoder = create_encoder(f"resnet{depth}_3d", "medicalnet", in_channels=1).eval()
    assert encoder.stem_adaptation == "as trained"
    x = torch.randn(2, 1, 32, 32, 32)
    with torch.no_grad():
        _same_features(encoder(x), reference(x))


def test_medicalnet_file_is_the_layout_monais_own_loader_reads(tmp_path):
    """MONAI's MedicalNet loader: ``checkpoint["state_dict"]``, ``module.`` stripped, strict load."""
    reference = medicalnet_reference(10, seed=1)
    path = save_medicalnet(reference, tmp_path / "resnet_10_23dataset.pth", head=False)
    monai_net = ResNetFeatures("resnet10", pretrained=False, spatial_dims=3, in_channels=1)
    state = torch.load(path, weights_only=True).get("state_dict")
    monai_net.load_state_dict({k.replace("module.", ""): v for k, v in state.items()}, strict=True)
    conv = convert_weights(path, "resnet10_3d")
    assert conv.provenance.get("skipped_head") is None
    mine = build_encoder("resnet10_3d")
    mine.load_state_dict(conv.state_dict, strict=True)
    x = torch.randn(1, 1, 32, 32, 32)
    with torch.no_grad():
        _same_features(mine.eval()(x), monai_net.eval()(x))


def test_swinunetr_ssl_file_imports_strictly_and_reproduces_the_reference(home, tmp_path):
    pytest.importorskip("einops", reason="MONAI's SwinUNETR needs einops")
    reference = swin_reference(seed=2)
    path = save_swin_ssl(reference.swinViT, tmp_path / "model_swinvit.pt")
    assert detect_format(path) == "swinunetr-ssl"
    record = import_weights(path, "swin-ssl", "swinvit_3d")
    assert record.format == "swinunetr-ssl" and "skipped_head" not in record.provenance
    assert "model_swinvit.pt" in record.provenance["published_file"]
    assert "research-contributions" in record.provenance["published_file"]
    prep = record.preprocessing_record
    assert prep.intensity == "hu-window:-1000:1000" and prep.spacing == (1.5, 1.5, 2.0)
    assert prep.roi_size == (96, 96, 96)
    encoder = create_encoder("swinvit_3d", "swin-ssl", in_channels=1).eval()
    x = torch.randn(1, 1, 32, 32, 64)
    with torch.no_grad():
        _same_features(encoder(x), reference.swinViT(x, reference.normalize))
        # MONAI's own SwinUNETR.load_from reads the same file into the same encoder
        fresh = swin_reference(seed=3)
        fresh.load_from(torch.load(path, weights_only=True))
        _same_features(encoder(x), fresh.swinViT(x, fresh.normalize))
    # the weights sit under SwinUNETR's own keys: they load into a SwinUNETR's Swin-ViT as they are
    target = swin_reference(seed=4)
    target.load_state_dict({**target.state_dict(), **encoder.state_dict()}, strict=True)
    assert torch.equal(target.swinViT.patch_embed.proj.weight, reference.swinViT.patch_embed.proj.weight)


def test_ssl_head_checkpoint_keeps_the_swin_vit_and_records_the_heads(home, tmp_path):
    pytest.importorskip("einops", reason="MONAI's SwinUNETR needs einops")
    reference = swin_reference(seed=5)
    heads = {"module.rotation_head.weight": torch.randn(4, 768),
             "module.contrastive_head.weight": torch.randn(512, 768),
             "module.conv.0.weight": torch.randn(768, 384, 2, 2, 2)}
    path = save_swin_ssl(reference.swinViT, tmp_path / "model_bestValRMSE.pt", heads, prefix="module.swinViT.")
    record = import_weights(path, "ssl-head", "swinvit_3d")
    assert record.provenance["skipped_head"] == ["rotation_head.weight", "contrastive_head.weight", "conv.0.weight"]
    extra = {"module.swinViT.norm.weight": torch.ones(768)}  # an unknown non-head key is refused, not dropped
    save_swin_ssl(reference.swinViT, tmp_path / "extra.pt", extra, prefix="module.swinViT.")
    with pytest.raises(WeightsError, match=r"unexpected keys \(1\): swinViT.norm.weight"):
        import_weights(tmp_path / "extra.pt", "extra", "swinvit_3d")


def test_wrong_depth_or_layout_is_a_one_line_error_naming_the_arch_that_fits(home, tmp_path):
    path = save_medicalnet(medicalnet_reference(10), tmp_path / "resnet_10.pth")
    for wrong in ("resnet18_3d", "resnet18", "densenet121_3d"):
        with pytest.raises(WeightsError, match="fits resnet10_3d: use --arch resnet10_3d") as info:
            import_weights(path, "medicalnet", wrong)
        assert "\n" not in str(info.value) and str(path) in str(info.value)
    # a checkpoint cut short (layer4 missing) fits no arch: the missing keys are listed, nothing is guessed
    state = torch.load(path, weights_only=True)
    state["state_dict"] = {k: v for k, v in state["state_dict"].items() if ".layer4." not in k}
    torch.save(state, tmp_path / "cut.pth")
    with pytest.raises(WeightsError, match=r"missing keys \(\d+\): layer4\.0\.conv1\.weight") as info:
        import_weights(tmp_path / "cut.pth", "cut", "resnet10_3d")
    assert "use --arch" not in str(info.value)
    data = path.read_bytes()  # a file cut short on disk
    (tmp_path / "truncated.pth").write_bytes(data[: len(data) // 3])
    with pytest.raises(WeightsError, match="truncated.pth: not a readable PyTorch file, or truncated"):
        import_weights(tmp_path / "truncated.pth", "t", "resnet10_3d")


def test_swin_file_into_a_resnet_names_swinvit_3d(home, tmp_path):
    pytest.importorskip("einops", reason="MONAI's SwinUNETR needs einops")
    path = save_swin_ssl(build_encoder("swinvit_3d").swinViT, tmp_path / "model_swinvit.pt")
    with pytest.raises(WeightsError, match="fits swinvit_3d: use --arch swinvit_3d"):
        import_weights(path, "swin", "resnet50_3d")


class _Payload:
    def __reduce__(self):
        return (print, ("code ran during unpickling",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_3d_files_are_read_with_weights_only(home, tmp_path, capsys):
    state = {f"module.{k}": v for k, v in build_encoder("resnet10_3d").state_dict().items()}
    with open(tmp_path / "resnet_10.pth", "wb") as f:
        pickle.dump({"state_dict": state, "opt": _Payload()}, f)
    with pytest.raises(WeightsError, match="refused — the file is a pickle that needs code to load"):
        import_weights(tmp_path / "resnet_10.pth", "medicalnet", "resnet10_3d")
    assert "code ran" not in capsys.readouterr().out


def test_medxfer_3d_checkpoint_round_trip(home, tmp_path):
    torch.manual_seed(7)
    source = build_encoder("resnet10_3d")
    _randomise_bn(source, 7)
    path = save_checkpoint(tmp_path / "self.pt", source, MEDICALNET, provenance={"task": "reconstruction"})
    assert detect_format(path) == "medxfer"
    record = import_weights(path, "selfpre3d", "resnet10_3d")
    assert record.format == "medxfer" and record.provenance["task"] == "reconstruction"
    assert record.preprocessing_record == MEDICALNET
    again = create_encoder("resnet10_3d", "selfpre3d", in_channels=1)
    for k, v in source.state_dict().items():
        assert torch.equal(again.state_dict()[k], v), k
    with pytest.raises(WeightsError, match="holds a resnet10_3d encoder, not resnet18_3d"):
        import_weights(path, "x", "resnet18_3d")


def test_plain_monai_densenet121_3d_state_dict_imports_with_an_unverified_preprocessing(home, tmp_path):
    torch.manual_seed(8)
    net = DenseNet121(spatial_dims=3, in_channels=1, out_channels=2)
    torch.save(net.state_dict(), tmp_path / "densenet3d.pt")
    record = import_weights(tmp_path / "densenet3d.pt", "plain", "densenet121_3d")
    assert record.format == "torchvision"
    assert record.provenance["skipped_head"] == ["class_layers.out.weight", "class_layers.out.bias"]
    assert "unverified" in record.provenance["preprocessing_reason"]
    encoder = create_encoder("densenet121_3d", "plain", in_channels=1)
    assert torch.equal(encoder.state_dict()["features.conv0.weight"], net.features.conv0.weight)


def test_cli_imports_a_medicalnet_file(home, tmp_path):
    path = save_medicalnet(medicalnet_reference(10), tmp_path / "resnet_10.pth")
    runner = CliRunner()
    result = runner.invoke(main, ["weights", "import", str(path), "--name", "medicalnet", "--arch", "resnet10_3d"])
    assert result.exit_code == 0, result.output
    assert "imported medicalnet for resnet10_3d (medicalnet, resnet_10.pth)" in result.stdout
    assert "conv_seg.0.weight" in result.stdout
    wrong = runner.invoke(main, ["weights", "import", str(path), "--name", "m2", "--arch", "resnet50_3d"])
    assert wrong.exit_code == 2
    lines = wrong.stderr.strip().splitlines()
    assert len(lines) == 1 and "use --arch resnet10_3d" in lines[0]
    assert "resnet10_3d" in runner.invoke(main, ["weights", "archs"]).stdout


def test_3d_preprocessing_records():
    # the optional 3D fields stay out of 2D records, and come back from a stored 3D record
    from medxfer.models.preprocessing import IMAGENET

    assert set(IMAGENET.to_dict()) == {"mode", "channel_order", "scale", "mean", "std", "post_scale", "input_size",
                                       "gray_to_rgb", "note"}
    assert Preprocessing.from_dict(SWIN_SSL.to_dict()) == SWIN_SSL
    assert SWIN_SSL.params()["preprocessing.spacing"] == "[1.5, 1.5, 2.0]"
    # MedicalNet's rule: z-score with the statistics of the non-zero voxels, per volume
    volume = torch.zeros(2, 1, 4, 4, 4)
    volume[0, 0, :2] = torch.arange(32.0).reshape(2, 4, 4) + 1
    out = MEDICALNET.apply(volume, in_channels=1, channel_dim=1)
    inside = volume[0, 0, :2]
    expected = (volume[0, 0] - inside.mean()) / inside.std(unbiased=False)
    torch.testing.assert_close(out[0, 0], expected)
    assert torch.equal(out[1], volume[1])  # an all-zero volume stays as it is
