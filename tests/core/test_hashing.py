"""Content digests: file and byte hashes, and the stable digest that config hashes and cache keys rely on."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from medxfer.core import sha256_bytes, sha256_file, stable_digest

REPO = Path(__file__).resolve().parents[2]
VALUE = {"encoder": "resnet18", "lr": 0.001, "grid": {"freeze": ["none", "all"], "seed": [0, 1]},
         "window": [40.0, 400.0], "path": "images/a.nii", "flags": {"augment": True, "dropout": None}}


def test_sha256_file_streams_large_and_empty_files(tmp_path):
    """A file larger than the 1 MiB read block hashes like the whole file at once (no block lost or repeated)."""
    data = os.urandom((5 << 19) + 123)  # 2.5 MiB and change: three blocks, the last one partial
    big = tmp_path / "big.bin"
    big.write_bytes(data)
    assert sha256_file(big) == hashlib.sha256(data).hexdigest()
    assert sha256_file(str(big)) == sha256_file(big)
    empty = tmp_path / "empty.bin"
    empty.write_bytes(b"")
    assert sha256_file(empty) == hashlib.sha256(b"").hexdigest()
    with pytest.raises(FileNotFoundError):
        sha256_file(tmp_path / "missing.bin")


def test_sha256_bytes_matches_the_file_digest(tmp_path):
    """Bytes in memory and the same bytes on disk give the same digest (a manifest hashed either way)."""
    data = b"item_id,fold\na,0\n"
    (tmp_path / "m.csv").write_bytes(data)
    assert sha256_bytes(data) == sha256_file(tmp_path / "m.csv") == hashlib.sha256(data).hexdigest()
    assert sha256_bytes(data + b" ") != sha256_bytes(data)


def test_stable_digest_ignores_key_order_and_is_the_documented_hash():
    """Key order never changes a digest, and the digest is sha256 of the sorted-keys JSON (stored contract)."""
    reordered = json.loads(json.dumps(VALUE))
    reordered = {k: reordered[k] for k in reversed(list(reordered))}
    reordered["grid"] = {"seed": [0, 1], "freeze": ["none", "all"]}
    assert list(reordered) != list(VALUE)
    assert stable_digest(reordered) == stable_digest(VALUE)
    expected = hashlib.sha256(json.dumps(VALUE, sort_keys=True, default=str).encode()).hexdigest()
    assert stable_digest(VALUE, 64) == expected
    assert stable_digest(VALUE) == expected[:20]


@pytest.mark.parametrize("length", [8, 16, 20, 24, 64])
def test_stable_digest_respects_the_length(length):
    """A stored digest keeps its length: each caller's length is honoured and is a prefix of the full hash."""
    digest = stable_digest(VALUE, length)
    assert len(digest) == length and all(c in "0123456789abcdef" for c in digest)
    assert stable_digest(VALUE, 64).startswith(digest)


def test_stable_digest_tells_different_values_apart():
    """Values that mean different things (a changed lr, 1 vs "1", a list order) never share a digest."""
    digests = {stable_digest(v) for v in (VALUE, {**VALUE, "lr": 0.0001}, {"x": 1}, {"x": "1"}, {"x": True},
                                          {"x": [1, 2]}, {"x": [2, 1]}, {"x": None})}
    assert len(digests) == 8
    # what JSON lacks is hashed as its str(): a Path keys like its text
    assert stable_digest({"p": Path("/data/a.nii")}) == stable_digest({"p": "/data/a.nii"})


def test_stable_digest_is_the_same_in_another_process():
    """A digest computed in another interpreter (other hash seed) matches: resumed studies find their runs."""
    code = ("import json, sys; from medxfer.core.hashing import stable_digest; "
            "print(stable_digest(json.loads(sys.argv[1])), stable_digest(json.loads(sys.argv[1]), 12))")
    env = dict(os.environ, PYTHONHASHSEED="12345", PYTHONPATH=str(REPO))
    out = subprocess.run([sys.executable, "-c", code, json.dumps(VALUE)], env=env, capture_output=True, text=True,
                         check=True, cwd=REPO)
    assert out.stdout.split() == [stable_digest(VALUE), stable_digest(VALUE, 12)]
