"""What a study's numbers depend on, recorded when it starts and checked on every resume.

A resumed study that scores new trials on other data, another baseline, other
constraints or other evaluator settings would put incomparable numbers on one front.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np
import torch

if TYPE_CHECKING:
    import optuna
    from torch import nn

    from evaluators.base import Constraint, EvalData, Evaluator
    from search.trials.finetune import FinetuneSettings
    from zoo.data import DataSplits

ATTR = "fingerprint"
TRAIN_PROBE = 64  # training samples hashed besides the count: a lazy dataset is not read whole


class FingerprintMismatch(ValueError):
    """A resume whose data, baseline, constraints or evaluator settings differ from the study's."""


def _digest(*chunks: bytes) -> str:
    h = hashlib.sha256()
    for chunk in chunks:
        h.update(chunk)
    return h.hexdigest()[:16]


def _split(split: EvalData) -> bytes:
    return (np.ascontiguousarray(split.inputs, dtype=np.float32).tobytes()
            + np.ascontiguousarray(split.labels, dtype=np.int64).tobytes())


def data_digest(data: DataSplits) -> dict[str, str]:
    """One hash per split; the training split by its size and its first and last samples."""
    n = len(data.train)  # type: ignore[arg-type]
    probe = [*range(min(n, TRAIN_PROBE)), *range(max(TRAIN_PROBE, n - TRAIN_PROBE), n)]
    train = [np.asarray(data.train[i][0], dtype=np.float32).tobytes() + str(int(data.train[i][1])).encode()
             for i in probe]
    return {"train": _digest(str(n).encode(), *train), "calib": _digest(np.ascontiguousarray(data.calib).tobytes()),
            "val": _digest(_split(data.val)), "test": _digest(_split(data.test))}


def model_digest(model: nn.Module) -> str:
    return _digest(*(name.encode() + t.detach().cpu().contiguous().numpy().tobytes()
                     for name, t in model.state_dict().items() if isinstance(t, torch.Tensor)))


def _settings(obj: Any) -> Any:
    """A dataclass's fields (minus those that cannot change a number), else its repr."""
    if dataclasses.is_dataclass(obj):
        skip = getattr(obj, "not_in_fingerprint", ())
        return {k: v for k, v in dataclasses.asdict(obj).items() if k not in skip}
    return repr(obj)


def fingerprint(*, data: DataSplits, baseline: nn.Module, constraints: Sequence[Constraint],
                evaluators: Sequence[Evaluator], finetune: FinetuneSettings,
                target: str = "onnxruntime") -> dict[str, Any]:
    """Every input a trial's numbers depend on, each part small enough to print.

    The target is recorded only when it is not ONNX Runtime, so studies from before targets
    existed (all ONNX Runtime) resume with the fingerprint they recorded.
    """
    return {
        "data": data_digest(data),
        "baseline": model_digest(baseline),
        "constraints": [_settings(c) for c in constraints],
        "evaluators": {type(e).__name__: _settings(e) for e in evaluators},
        "finetune": _settings(finetune),
        **({"target": target} if target != "onnxruntime" else {}),
    }


def changes(stored: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """Dotted names of what differs, e.g. ``data.val`` or ``evaluators.Latency``."""
    out = []
    for key in sorted({*stored, *current}):
        old, new = stored.get(key), current.get(key)
        if old == new:
            continue
        if isinstance(old, dict) and isinstance(new, dict):
            out += [f"{key}.{k}" for k in sorted({*old, *new}) if old.get(k) != new.get(k)]
        else:
            out.append(key)
    return out


def check_fingerprint(study: optuna.Study, current: Mapping[str, Any]) -> None:
    """Record ``current`` on a new study; refuse a resume whose fingerprint differs, naming what changed."""
    current = json.loads(json.dumps(current, default=str))  # the form the storage gives back
    stored = study.user_attrs.get(ATTR)
    if stored is None:
        study.set_user_attr(ATTR, current)
        return
    changed = changes(stored, current)
    if changed:
        details = "; ".join(f"{name}: {_at(stored, name)} -> {_at(current, name)}" for name in changed[:4])
        raise FingerprintMismatch(
            f"study {study.study_name!r} was searched with other {', '.join(changed)} ({details}); resume it "
            "with the settings it used, or start a new study with search.study_name=<new name>")


def _at(tree: Mapping[str, Any], dotted: str) -> str:
    value: Any = tree
    for part in dotted.split("."):
        value = value.get(part) if isinstance(value, Mapping) else None
    return json.dumps(value)[:80]
