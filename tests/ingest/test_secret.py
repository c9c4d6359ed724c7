"""The pseudonymisation secret: created safely, never inside SRC/OUT, bound to the output folder it built."""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from medxfer import synthetic
from medxfer.cli import main
from medxfer.ingest import IngestError, ingest, split
from medxfer.ingest.deid import Pseudonymizer
from medxfer.ingest.manifest import SLICE_LABELS_FILE, read_manifest
from medxfer.ingest.secret import (check_output_secret, load_secret, permission_warning, recorded_fingerprints,
                                   SecretError, start_over)


def _export(src: Path, n: int = 4, first: int = 0) -> None:
    for i in range(first, first + n):
        synthetic.radiograph(src / f"p{i}" / "dx.dcm", synthetic.new_patient(i), rows=24, cols=20)


def _secret(path: Path, char: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(char * 64)
    path.chmod(0o600)
    return path


def _run(src, out, **kw):
    kw.setdefault("workers", 1)
    return ingest(src, out, **kw)


def _images(out: Path) -> set[str]:
    return {p.relative_to(out).as_posix() for p in (out / "images").rglob("*") if p.is_file()}


def test_created_secret_is_private_and_short_one_refused(tmp_path):
    s = load_secret(tmp_path / "home" / "secret")
    assert len(s) >= 32 and load_secret(tmp_path / "home" / "secret") == s
    assert (tmp_path / "home" / "secret").stat().st_mode & 0o777 == 0o600
    assert [p.name for p in (tmp_path / "home").iterdir()] == ["secret"]  # no temporary file left
    (tmp_path / "s").write_text("short")
    with pytest.raises(ValueError, match="at least 16"):
        load_secret(tmp_path / "s")
    with pytest.raises(FileNotFoundError):
        load_secret(tmp_path / "nope", create=False)


def test_secret_created_without_hard_links_or_by_a_concurrent_ingest(tmp_path, monkeypatch):
    import medxfer.ingest.secret as mod

    def no_links(a, b):
        raise PermissionError("hard links not supported")

    monkeypatch.setattr(mod.os, "link", no_links)
    s = load_secret(tmp_path / "secret")
    assert (tmp_path / "secret").stat().st_mode & 0o777 == 0o600 and load_secret(tmp_path / "secret") == s

    def other_ingest_won(a, b):  # another ingest created the secret between our check and our link
        _secret(Path(b), "w")
        raise FileExistsError(b)

    monkeypatch.setattr(mod.os, "link", other_ingest_won)
    assert load_secret(tmp_path / "other") == b"w" * 64
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other", "secret"]


@pytest.mark.parametrize("inside", ["out", "src"])
def test_secret_inside_out_or_src_via_medxfer_home_is_refused(tmp_path, monkeypatch, inside):
    _export(tmp_path / "src", n=1)
    home = tmp_path / inside / "home"
    monkeypatch.setenv("MEDXFER_HOME", str(home))
    with pytest.raises(IngestError, match="secret file must not be inside.*MEDXFER_HOME"):
        _run(tmp_path / "src", tmp_path / "out")
    assert not (home / "secret").exists()  # refused before any secret is created
    assert not (tmp_path / "out" / "manifest.csv").exists()
    # an explicit --secret-file inside OUT, or a link to one, is refused as before
    secret = _secret(tmp_path / "out" / "s", "x")
    (tmp_path / "link").symlink_to(secret)
    for given in (secret, tmp_path / "link"):
        with pytest.raises(IngestError, match="secret file must not be inside"):
            _run(tmp_path / "src", tmp_path / "out", secret_file=given)


def test_another_secret_is_refused_and_out_left_alone(tmp_path):
    _export(tmp_path / "src")
    a, b = _secret(tmp_path / "a" / "secret", "a"), _secret(tmp_path / "b" / "secret", "b")
    out = tmp_path / "out"
    _run(tmp_path / "src", out, secret_file=a)
    split(out, 2)
    before = {p: (out / p).read_bytes() for p in ("manifest.csv", "ingest_report.json", "split.json")}
    images = _images(out)
    fa, fb = Pseudonymizer(load_secret(a)).fingerprint, Pseudonymizer(load_secret(b)).fingerprint
    assert recorded_fingerprints(out) == {fa}
    with pytest.raises(IngestError) as err:
        _run(tmp_path / "src", out, secret_file=b)
    msg = str(err.value)
    assert "\n" not in msg
    for frag in ("another pseudonymisation secret", fa, fb, "moved", "MEDXFER_HOME", "--secret-file", "--rekey"):
        assert frag in msg, msg
    assert {p: (out / p).read_bytes() for p in before} == before and _images(out) == images
    # the same through MEDXFER_HOME: a changed home is refused too
    with pytest.raises(IngestError, match="another pseudonymisation secret"):
        _run(tmp_path / "src", out)
    # and the original secret still works, reusing everything
    res = _run(tmp_path / "src", out, secret_file=a)
    assert res.counts["decoded"] == 0


def test_lost_secret_is_refused_and_not_recreated(tmp_path, medxfer_home):
    _export(tmp_path / "src", n=2)
    out = tmp_path / "out"
    _run(tmp_path / "src", out)  # the default secret, $MEDXFER_HOME/secret (created)
    lost = medxfer_home / "secret"
    moved = tmp_path / "moved_secret"
    lost.rename(moved)
    with pytest.raises(IngestError, match=f"another pseudonymisation secret.*{lost} does not exist.*--rekey"):
        _run(tmp_path / "src", out)
    assert not lost.exists()  # a new secret would silently become the default for every later ingest
    assert _run(tmp_path / "src", out, secret_file=moved).counts["decoded"] == 0


def test_unreadable_fingerprint_files_are_tolerated(tmp_path):
    out = tmp_path / "out"
    (out / ".medxfer").mkdir(parents=True)
    (out / "ingest_report.json").write_text("{not json")
    (out / ".medxfer" / "index.json").write_text("[]")
    assert recorded_fingerprints(out) == set()
    assert check_output_secret(out, "abc") == set()
    (out / ".medxfer" / "index.json").write_text(json.dumps({"secret_fingerprint": "old"}))
    with pytest.raises(SecretError, match="another pseudonymisation secret"):
        check_output_secret(out, "abc")
    assert check_output_secret(out, "abc", rekey=True) == {"old"}
    assert check_output_secret(out, "old") == set()


def test_rekey_replaces_everything_the_old_secret_made(tmp_path, caplog):
    _export(tmp_path / "src")
    a, b = _secret(tmp_path / "a" / "secret", "a"), _secret(tmp_path / "b" / "secret", "b")
    out = tmp_path / "out"
    _run(tmp_path / "src", out, secret_file=a)
    split(out, 2)
    old_rows, _ = read_manifest(out / "manifest.csv")
    old_images = _images(out)
    with caplog.at_level(logging.WARNING, logger="medxfer.ingest"):
        res = _run(tmp_path / "src", out, secret_file=b, rekey=True)
    fb = Pseudonymizer(load_secret(b)).fingerprint
    rows, columns = read_manifest(out / "manifest.csv")
    assert len(rows) == len(old_rows) and res.counts["decoded"] == len(rows)
    assert not {r["patient"] for r in rows} & {r["patient"] for r in old_rows}
    assert not {r["item_id"] for r in rows} & {r["item_id"] for r in old_rows}
    assert not old_images & _images(out) and _images(out) == {r["image"] for r in rows}
    assert not (out / "split.json").exists() and "fold" not in columns  # old folds name old pseudonyms
    assert recorded_fingerprints(out) == {fb}
    report = json.loads(res.report.read_text())
    assert report["secret_fingerprint"] == fb
    assert any("--rekey" in w["message"] and "medxfer split" in w["message"] for w in report["warnings"])
    assert "--rekey" in caplog.text
    # from now on OUT belongs to the new secret: a plain re-run reuses it, the old secret is refused
    assert _run(tmp_path / "src", out, secret_file=b).counts["decoded"] == 0
    with pytest.raises(IngestError, match="--rekey"):
        _run(tmp_path / "src", out, secret_file=a)
    # --rekey with the secret OUT was built with changes nothing
    assert _run(tmp_path / "src", out, secret_file=b, rekey=True).counts["decoded"] == 0


@pytest.mark.skipif(os.name != "posix", reason="permission bits")
def test_secret_readable_by_others_is_warned_about(tmp_path, caplog):
    _export(tmp_path / "src", n=1)
    s = _secret(tmp_path / "k" / "secret", "k")
    assert permission_warning(s) is None
    s.chmod(0o644)
    with caplog.at_level(logging.WARNING, logger="medxfer.ingest"):
        res = _run(tmp_path / "src", tmp_path / "out", secret_file=s)
    warns = [w["message"] for w in json.loads(res.report.read_text())["warnings"]]
    assert any("open to other users (mode 0644)" in w and "chmod 600" in w for w in warns), warns
    assert "chmod 600" in caplog.text
    s.chmod(0o600)
    res = _run(tmp_path / "src", tmp_path / "out", secret_file=s)
    assert not any("other users" in w["message"] for w in json.loads(res.report.read_text())["warnings"])


def test_cli_refuses_another_secret_in_one_line_and_rekey_starts_over(tmp_path):
    _export(tmp_path / "src", n=2)
    a, b = _secret(tmp_path / "a" / "secret", "a"), _secret(tmp_path / "b" / "secret", "b")
    args = ["ingest", str(tmp_path / "src"), "--out", str(tmp_path / "out"), "--workers", "1", "--no-progress"]
    assert CliRunner().invoke(main, args + ["--secret-file", str(a)]).exit_code == 0
    r = CliRunner().invoke(main, args + ["--secret-file", str(b)])
    assert r.exit_code != 0
    assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("medxfer: error:") and "--rekey" in lines[0], r.stderr
    r = CliRunner().invoke(main, args + ["--secret-file", str(b), "--rekey"])
    assert r.exit_code == 0, r.output
    assert recorded_fingerprints(tmp_path / "out") == {Pseudonymizer(load_secret(b)).fingerprint}


def test_a_fingerprint_spelled_inside_a_value_is_not_the_outputs(tmp_path):
    """Fingerprints are found by search, not by parsing (large indexes): a value that spells the key is not one."""
    out = tmp_path / "out"
    out.mkdir()
    doc = {"files": [{"reason": 'odd "secret_fingerprint": "feedbeef" text'}], "secret_fingerprint": "abc123"}
    (out / "ingest_report.json").write_text(json.dumps(doc, indent=1))
    assert recorded_fingerprints(out) == {"abc123"}


def test_start_over_removes_the_slice_labels_of_the_old_item_ids(tmp_path):
    """Per-slice labels are keyed by item ids of the old secret: an interrupted --rekey must not leave
    them beside a manifest whose item ids all changed."""
    (tmp_path / SLICE_LABELS_FILE).write_text("item_id,slice,finding\nold0001,3,1\n")
    (tmp_path / "manifest.csv").write_text("item_id\nold0001\n")
    start_over(tmp_path, {"old"}, "new")
    assert not (tmp_path / SLICE_LABELS_FILE).exists() and not (tmp_path / "manifest.csv").exists()
