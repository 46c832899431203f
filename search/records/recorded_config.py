"""The config a study was searched with: recorded once, read back by every later command.

``autosqueeze search`` stores the composed config in the study; ``export``, ``report``,
``sync`` and a resumed ``search`` start from it, so a study is always read with the data,
model and space that produced its numbers. From the command line they take only keys that
cannot change a number (where files go, the budget, tracking, which trial to export); any
other key the command line changes to another value than the recorded one is a conflict.

Plain nested dicts only: the CLI converts Hydra's config before and after.
"""
from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Mapping

from search.deploy.package import MANIFEST
from search.records.secrets import redact

ATTR = "config"  # the study user attr (and manifest key) holding the recorded config
# Keys that locate the study or are choices of the command being run: always the command line's.
FOLLOW_COMMAND = ("paths", "storage", "search.study_name", "export", "quiet", "gate")
# Keys that change no recorded number: the recorded value unless the command line changes it.
REMEMBERED = ("tracking", "search.n_trials", "search.timeout", "search.workers", "search.heartbeat",
              "search.trial_timeout", "search.max_failures", "search.early_stop", "search.prescreen",
              # local workers set it to share the cores; ONNX Runtime's accuracy does not depend on it
              "evaluator.evaluators.accuracy.threads")
LOCATING = ("storage", "search.study_name", "paths")  # what finds a study; the baseline for "changed"
REDACTED = ":***@"


class _Unset:
    def __repr__(self) -> str:
        return "(unset)"


UNSET: Any = _Unset()


def _under(key: str, prefixes: tuple[str, ...]) -> bool:
    return any(key == p or key.startswith(p + ".") for p in prefixes)


def is_free(key: str) -> bool:
    """May the command line change this key of a recorded study?"""
    return _under(key, FOLLOW_COMMAND + REMEMBERED)


def override_key(override: str) -> str:
    """``+data.path=/x`` -> ``data.path``; ``model@x=custom`` -> ``model``."""
    return override.split("=", 1)[0].lstrip("+~").split("@", 1)[0]


def is_locating(override: str) -> bool:
    """``storage=...``, ``search.study_name=...`` and ``paths.*=...``: overrides that find the study."""
    return _under(override_key(override), LOCATING)


def record(config: Mapping[str, Any]) -> dict[str, Any]:
    """What a study stores: JSON-safe, every password in a URL masked."""
    return json.loads(json.dumps(_masked(config)))


def _masked(node: Any) -> Any:
    if isinstance(node, Mapping):
        return {str(k): _masked(v) for k, v in node.items()}
    if isinstance(node, (list, tuple)):
        return [_masked(v) for v in node]
    return redact(node) if isinstance(node, str) else node


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; lists and empty mappings are leaves."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for key, value in flat.items():
        *parents, leaf = key.split(".")
        node = tree
        for part in parents:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        node[leaf] = value
    return tree


def same(recorded: Any, given: Any) -> bool:
    """Equal as stored: the record went through JSON and had its passwords masked."""
    given = UNSET if given is UNSET else json.loads(json.dumps(given))
    return recorded == given or (isinstance(recorded, str) and isinstance(given, str) and recorded == redact(given))


@dataclass(frozen=True)
class Conflict:
    key: str
    recorded: Any
    given: Any

    def text(self) -> str:
        return f"{self.key} recorded {_show(self.recorded)}, given {_show(self.given)}"


def _show(value: Any) -> str:
    return repr(value) if value is UNSET else json.dumps(value)


def changed_keys(given: Mapping[str, Any], default: Mapping[str, Any], named: tuple[str, ...] = ()) -> set[str]:
    """Leaves the command line changed: the config with all overrides against the one with only the locating ones.

    ``named`` (the overridden keys and groups) adds the leaves an override sets to their default value,
    ``model=resnet_small`` for a study searched with another model, which the comparison cannot see.
    """
    flat_given, flat_default = flatten(given), flatten(default)
    return {k for k in flat_given.keys() | flat_default.keys()
            if not same(flat_default.get(k, UNSET), flat_given.get(k, UNSET)) or _under(k, named)}


def conflicts(recorded: Mapping[str, Any], given: Mapping[str, Any], default: Mapping[str, Any],
              named: tuple[str, ...] = ()) -> list[Conflict]:
    """Keys the command line sets to another value than the record, where that could change a number.

    Only the sections the record holds can conflict with it (a package records just ``data``).
    """
    flat_recorded, flat_given = flatten(recorded), flatten(given)
    # a group override also counts for the recorded leaves the new group lacks (data=custom drops data.root)
    touched = changed_keys(given, default, named) | {k for k in flat_recorded if _under(k, named)}
    found = [Conflict(k, flat_recorded.get(k, UNSET), flat_given.get(k, UNSET))
             for k in sorted(touched)
             if k.split(".")[0] in recorded and not is_free(k)]
    return [c for c in found if not same(c.recorded, c.given)]


def effective(recorded: Mapping[str, Any], given: Mapping[str, Any], default: Mapping[str, Any],
              named: tuple[str, ...] = ()) -> dict[str, Any]:
    """The record, with the command line's free keys and whatever the record does not cover."""
    flat_recorded, flat_given = flatten(recorded), flatten(given)
    changed = changed_keys(given, default, named)
    out = dict(flat_recorded)
    for key, value in flat_given.items():
        uncovered = key.split(".")[0] not in recorded or (key not in flat_recorded and is_free(key))
        if (uncovered or _under(key, FOLLOW_COMMAND) or (is_free(key) and key in changed)
                or (key in flat_recorded and REDACTED in str(flat_recorded[key]) and same(flat_recorded[key], value))):
            out[key] = value  # the last case puts back a password the record masked
    return unflatten(out)


def masked_keys(config: Mapping[str, Any]) -> list[str]:
    """Keys still holding a masked password: the record cannot supply it, the command line must."""
    return sorted(k for k, v in flatten(config).items() if isinstance(v, str) and REDACTED in v)


def refusal(subject: str, found: list[Conflict], *,
            way_out: str = "or give a new search.study_name to start a fresh study") -> str:
    """One line: every conflicting key with both values, and the ways out (``subject``: "study 'x' was searched")."""
    return (f"{subject} with other settings: {'; '.join(c.text() for c in found)}. "
            f"Drop these overrides to use the recorded values{', ' + way_out if way_out else ''}")


def package_manifest(package: Path) -> dict[str, Any]:
    """A package's manifest (folder or zip), or ``{}`` when it cannot be read: verify reports that itself."""
    try:
        if package.is_dir():
            return json.loads((package / MANIFEST).read_text(encoding="utf-8"))
        with zipfile.ZipFile(package) as archive:
            names = sorted(n for n in archive.namelist() if PurePosixPath(n).name == MANIFEST)
            return json.loads(archive.read(names[0])) if names else {}
    except (OSError, ValueError, zipfile.BadZipFile):
        return {}
