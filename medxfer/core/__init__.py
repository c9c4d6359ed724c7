"""The lowest layer: what every other package may use and nothing here imports from medxfer.

* :mod:`medxfer.core.errors` — :class:`MedxferError`, the base of every error medxfer raises on
  purpose (the CLI reports these as one line, by type);
* :mod:`medxfer.core.hashing` — :func:`sha256_file` and :func:`stable_digest`, the one content
  digest of JSON-able values (config hashes, cache keys);
* :mod:`medxfer.core.files` — atomic writes (a crash never leaves half a file);
* :mod:`medxfer.core.home` — ``$MEDXFER_HOME``, where per-user state (secret, weights registry) lives.
"""
from .errors import MedxferError
from .files import atomic_write, atomic_write_json, atomic_writer
from .hashing import sha256_bytes, sha256_file, stable_digest
from .home import medxfer_home

__all__ = ["MedxferError", "atomic_write", "atomic_write_json", "atomic_writer", "sha256_bytes", "sha256_file",
           "stable_digest", "medxfer_home"]
