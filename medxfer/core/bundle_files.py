"""Where medxfer's MONAI bundles are and which settings they take, without torch or MONAI: the CLI checks a
command's bundle and its ``--key value`` settings with this before the heavy libraries load (an argument error
answers in well under a second). :mod:`medxfer.engine.bundles` runs the bundles and re-exports these names.

A bundle is named (``classification``, ``segmentation``: the folders of ``medxfer/bundles/``, shipped
as package data, or of ``$MEDXFER_BUNDLES``) or given as a path. Overrides are data, never code: a value
MONAI's config parser would interpret (``$…`` code, ``@…`` references, ``%…`` macros, ``#``, ``_target_``
components) is refused by :func:`check_overrides` with its key (details in :mod:`medxfer.engine.bundles`).
"""
from __future__ import annotations

import difflib
import json
import os
import re
from importlib.resources import files
from pathlib import Path
from typing import Any, Iterable

from .errors import MedxferError

BUNDLE_NAMES = ("classification", "segmentation")


class BundleError(MedxferError, ValueError):
    """A bundle that cannot be found or run as asked."""


def bundles_dir() -> Path:
    """``$MEDXFER_BUNDLES``, else the ``bundles`` folder inside the installed ``medxfer`` package
    (package data: a wheel install trains as a source checkout does)."""
    env = os.environ.get("MEDXFER_BUNDLES")
    # MONAI's runner reads configs by file name: the package must be installed as files (not zipped),
    # which pip always does; a Traversable that is not a real folder fails in bundle_path with the path.
    return Path(env) if env else Path(str(files("medxfer") / "bundles"))


def bundle_path(bundle: str | os.PathLike) -> Path:
    """The bundle folder for a name or path (it must hold ``configs/train.json``)."""
    path = Path(bundle)
    if not (path / "configs" / "train.json").is_file():
        path = bundles_dir() / str(bundle)
    if not (path / "configs" / "train.json").is_file():
        raise BundleError(f"no bundle {bundle!r}: give a bundle folder (with configs/train.json) or one of "
                          f"{', '.join(BUNDLE_NAMES)} (looked in {bundles_dir()})")
    return path


def bundle_config(bundle: str | os.PathLike) -> dict[str, Any]:
    """The parsed ``configs/train.json`` of ``bundle`` (a name or a folder): its keys are the settings."""
    return json.loads((bundle_path(bundle) / "configs" / "train.json").read_text())


def closest_hint(unknown: list[str], allowed: Iterable[str]) -> str:
    """``; did you mean 'epochs'?`` (one unknown name) or ``; did you mean 'grid' for 'gird', …?`` (several) for
    the unknown names that look like an allowed one; ``""`` when none does."""
    pairs = [(key, difflib.get_close_matches(str(key), sorted(allowed), n=1)) for key in unknown]
    if len(unknown) == 1:
        return f"; did you mean {pairs[0][1][0]!r}?" if pairs[0][1] else ""
    hints = [f"{match[0]!r} for {key!r}" for key, match in pairs if match]
    return f"; did you mean {', '.join(hints)}?" if hints else ""


def check_bundle_keys(overrides: Iterable[str], bundle: str | os.PathLike) -> None:
    """Refuse override keys that are not settings of ``bundle`` (keys of its ``configs/train.json``): MONAI
    would add them unread and train on the defaults. The one-line :class:`BundleError` names the closest key
    (``unknown bundle key 'epcohs'; did you mean 'epochs'?``)."""
    keys = set(bundle_config(bundle))
    unknown = [key for key in dict.fromkeys(overrides) if key not in keys]
    if unknown:
        plural = "s" if len(unknown) > 1 else ""
        raise BundleError(f"unknown bundle key{plural} {', '.join(map(repr, unknown))}{closest_hint(unknown, keys)} "
                          f"(the settings are the keys of {bundle_path(bundle) / 'configs' / 'train.json'})")


# What MONAI's ConfigParser (monai/bundle: utils.py, config_item.py, reference_resolver.py,
# config_parser.py) does with a string at the start of a config value.
_INTERPRETED_PREFIXES = {
    "$": "which MONAI would run as Python code",
    "@": "which MONAI would replace with another config entry (a reference)",
    "%": "which MONAI would replace with the content of another config, read from any file (a macro)",
}
_RELATIVE_ID = re.compile(r"[@%](?:::|#)")  # "@::x", "%#x": relative ids, rewritten anywhere in a string
# ConfigComponent.non_arg_keys: a mapping with `_target_` is instantiated (any importable callable)
COMPONENT_KEYS = frozenset({"_target_", "_disabled_", "_requires_", "_desc_", "_mode_"})
# A top-level config id: "::" or "#" in a key would reach into the bundle's nested components
_OVERRIDE_KEY = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")


def _shown(text: str, limit: int = 40) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "…")


def config_data_problem(value: Any) -> tuple[str, str] | None:
    """Where in ``value`` (``""``, ``"[0]"``, ``".key[1]"``) and why MONAI's config parser would not
    take it as plain data; None when it is data (strings, numbers, lists and mappings of them)."""
    if isinstance(value, str):
        if value[:1] in _INTERPRETED_PREFIXES:
            return "", f"{_shown(value)} starts with {value[0]!r}, {_INTERPRETED_PREFIXES[value[0]]}"
        if _RELATIVE_ID.search(value):
            return "", f"{_shown(value)} holds a relative reference ('@::' or '%::'), which MONAI would rewrite"
        if "#" in value:
            return "", f"{_shown(value)} contains '#', which MONAI's config parser rewrites to '::'"
        return None
    if isinstance(value, dict):
        for key, item in value.items():
            if str(key) in COMPONENT_KEYS:
                return f".{key}", f"the key {str(key)!r} would make MONAI instantiate or control a component"
            found = config_data_problem(item)
            if found:
                return f".{key}{found[0]}", found[1]
        return None
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            found = config_data_problem(item)
            if found:
                return f"[{i}]{found[0]}", found[1]
    return None


def check_overrides(overrides: dict[str, Any], prefix: str = "") -> None:
    """Refuse an override that MONAI would not take as data (see the module docstring): a key that
    is not a plain config id, or a value :func:`config_data_problem` finds. The one-line
    :class:`BundleError` names the key (``prefix`` before it: ``--`` for the command line)."""
    for key, value in overrides.items():
        if not isinstance(key, str) or not _OVERRIDE_KEY.match(key):
            raise BundleError(f"override {prefix}{key}: a bundle setting is a plain config key (letters, digits, "
                              "'_'; '#' and '::' would reach into the bundle's components)")
        found = config_data_problem(value)
        if found:
            raise BundleError(f"{prefix}{key}{found[0]}: {found[1]}; settings are data, never code")


def parse_override(value: str) -> Any:
    """Command-line text → JSON value when it parses (``2``, ``1e-4``, ``true``, ``["PX"]``), else the string."""
    try:
        return json.loads(value)
    except (ValueError, TypeError):
        return value
