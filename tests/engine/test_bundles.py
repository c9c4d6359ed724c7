"""Running bundles from Python and the command line: overrides are data, never code, and a failed
run's one-line reason is the clear message, not an exception it replaced."""
from __future__ import annotations

import json
import re

import pytest
from click.testing import CliRunner

from medxfer.cli import main
from medxfer.engine import BundleError, train_bundle
from medxfer.engine.bundles import COMPONENT_KEYS, bundle_path, error_summary, root_cause


SMALL = {"epochs": 1, "image_size": 32, "batch_size": 4, "modalities": ["PX"], "fold": 1}


def _touch(marker) -> str:
    """A MONAI expression that would create ``marker``."""
    return f"$__import__('pathlib').Path({str(marker)!r}).touch() or 0.2"


@pytest.mark.parametrize("key, value, where, why", [
    ("dropout", "EXPR", "dropout", "starts with '$', which MONAI would run as Python code"),
    ("modalities", ["PX", "EXPR"], r"modalities\[1\]", "starts with '$'"),
    ("classes", {"benign": ["@label"]}, r"classes.benign\[0\]", "a reference"),
    ("classes", ["%/etc/medxfer/evil.json::classes"], r"classes\[0\]", "read from any file"),
    ("label", "finding#1", "label", "rewrites to '::'"),
    ("label", "x@::label", "label", "relative reference"),
    ("network_def", {"_target_": "os.system", "command": "true"}, "network_def._target_", "instantiate"),
])
def test_an_override_monai_would_interpret_is_refused_with_its_key(dental_cohort, mlflow_store, tmp_path, key,
                                                                   value, where, why):
    marker = tmp_path / "PWNED"
    value = json.loads(json.dumps(value).replace('"EXPR"', json.dumps(_touch(marker))))
    settings = {**SMALL, "manifest": str(dental_cohort.manifest), "label": "supernumerary", key: value}
    with pytest.raises(BundleError, match=rf"^{where}: .*{re.escape(why)}.*; settings are data, never code$"):
        train_bundle("classification", **settings)
    assert not marker.exists()


def test_an_override_key_reaching_into_the_bundles_components_is_refused(tmp_path):
    with pytest.raises(BundleError, match=r"^override network_def#_target_: a bundle setting is a plain config key"):
        train_bundle("classification", manifest=str(tmp_path / "manifest.csv"), label="y",
                     **{"network_def#_target_": "os.system"})


def test_component_keys_are_monais():
    from monai.bundle import ConfigComponent

    assert COMPONENT_KEYS == ConfigComponent.non_arg_keys  # a MONAI upgrade adding one fails here


def test_train_cli_refuses_an_expression_override_in_one_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    marker = tmp_path / "PWNED"
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("item_id,image,fold,y\n")
    args = ["train", "classification", "--manifest", str(manifest), "--label", "y", "--encoder", "resnet18"]
    result = CliRunner().invoke(main, args + ["--dropout", _touch(marker)])
    assert result.exit_code == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("medxfer: error: --dropout: \"$__import__(")
    assert line.endswith("starts with '$', which MONAI would run as Python code; settings are data, never code")
    nested = CliRunner().invoke(main, args + ["--modalities", json.dumps(["PX", _touch(marker)])])
    assert nested.exit_code == 2 and "--modalities[1]: " in nested.stderr
    key = CliRunner().invoke(main, args + ["--network_def#_target_", "os.system"])
    assert key.exit_code == 2 and "override --network_def#_target_" in key.stderr
    assert not marker.exists()


def test_a_3d_encoder_with_2d_input_is_one_line_before_any_work(tmp_path, monkeypatch):
    """The 3D encoders share the registry with the 2D ones; a bundle running 2D / 2.5D samples refuses
    them up front (pointing at input: 3d) instead of failing inside the first convolution."""
    monkeypatch.chdir(tmp_path)
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("item_id,image,fold,y\n")
    for bundle in ("classification", "segmentation"):
        result = CliRunner().invoke(main, ["train", bundle, "--manifest", str(manifest), "--label", "y",
                                           "--encoder", "resnet18_3d"])
        assert result.exit_code == 2
        (line,) = result.stderr.strip().splitlines()
        assert line.startswith("medxfer: error: encoder 'resnet18_3d' is a 3D network; input: 2d trains a 2D network")
        assert "set input: 3d" in line
    with pytest.raises(BundleError, match="use one of resnet18, "):
        train_bundle("classification", manifest=str(manifest), label="y", encoder="swinvit_3d")
    assert not (tmp_path / "runs").exists() and not (tmp_path / "mlruns").exists()


@pytest.mark.parametrize("config", ["train", "multi_gpu_train"])
@pytest.mark.parametrize("bundle", ["classification", "segmentation"])
def test_the_bundles_own_initialize_refuses_a_3d_encoder_with_2d_input_first(bundle, config):
    """``python -m monai.bundle run`` and torchrun never pass through train_bundle: the bundle's own
    ``initialize`` list checks the encoder first, before anything builds the network."""
    from monai.bundle import ConfigParser

    root = bundle_path(bundle) / "configs"
    parser = ConfigParser()
    parser.read_config([str(root / "train.json")] + ([str(root / f"{config}.json")] if config != "train" else []))
    parser["encoder"] = "resnet18_3d"
    assert parser["initialize"][0] == "$medxfer.engine.bundles.check_encoder_dims(@encoder, @input, @task)"
    with pytest.raises(RuntimeError) as caught:  # MONAI wraps what an expression raises
        parser.get_parsed_content("initialize#0")
    assert isinstance(root_cause(caught.value), BundleError)
    assert error_summary(caught.value).startswith("encoder 'resnet18_3d' is a 3D network; input: 2d trains a 2D")


def test_tracking_is_the_bundles_setting_not_a_file_monai_loads(dental_cohort, mlflow_store, tmp_path):
    """``tracking`` is a key of the bundle's config (MLflow on or off). Given to ConfigWorkflow as a
    keyword it was MONAI's own ``tracking``: a settings file loaded into the config, code and all."""
    marker = tmp_path / "PWNED"
    settings = tmp_path / "settings.json"
    settings.write_text(json.dumps({"handlers_id": {"trainer": {"id": "network_def", "handlers": "network_def#x"}},
                                    "configs": {"trainer": _touch(marker)}}))
    with pytest.raises(Exception) as caught:  # the label column stops the run in initialize, before it trains
        train_bundle("classification", manifest=str(dental_cohort.manifest), label="no_such_column",
                     encoder="resnet18", modalities=["PX"], tracking=str(settings), output_dir=str(tmp_path / "out"))
    assert not marker.exists()
    assert "no_such_column" in error_summary(caught.value)


def test_an_unknown_encoder_is_refused_before_monai_parses_the_bundle(dental_cohort, tmp_path, monkeypatch):
    """Before any config is parsed or cohort read: medxfer's one line with the known encoders and the closest
    one, not MONAI's wrapped KeyError / ValueError."""
    import monai.bundle

    monkeypatch.setattr(monai.bundle, "ConfigWorkflow", None)  # reached: a TypeError, not the encoder's error
    with pytest.raises(BundleError) as caught:
        train_bundle("classification", manifest=str(dental_cohort.manifest), label="supernumerary",
                     encoder="resnet81", output_dir=str(tmp_path / "out"))
    assert error_summary(caught.value).startswith("unknown encoder 'resnet81'; known: resnet18, resnet34, ")
    assert error_summary(caught.value).endswith("; did you mean 'resnet18'?")


def test_root_cause_follows_causes_but_not_a_suppressed_context():
    def unknown(name):
        try:
            return {}[name]
        except KeyError:
            raise ValueError(f"unknown encoder {name!r}; known: resnet18") from None

    try:
        try:
            unknown("resnet81")
        except ValueError as exc:
            raise RuntimeError("Failed to instantiate component") from exc
    except RuntimeError as wrapped:
        assert error_summary(wrapped) == "ValueError: unknown encoder 'resnet81'; known: resnet18"
    try:
        try:
            {}["missing"]
        except KeyError:
            raise RuntimeError("Failed to evaluate")  # noqa: B904 - an unsuppressed context is followed
    except RuntimeError as exc:
        assert isinstance(root_cause(exc), KeyError)
