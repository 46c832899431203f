"""Knob kinds, one module each. A module here that defines ``KIND`` is a kind: nothing else registers it."""
from __future__ import annotations

import importlib
import pkgutil
from functools import cache
from typing import Mapping, Sequence

from spaces.base import PlanError
from spaces.kinds.base import STAGES, KnobKind

DEFAULT_KINDS = ("prune", "quant")
"""What ``space.kinds`` holds unless the user names others: today's search, exactly."""


@cache
def registry() -> Mapping[str, KnobKind]:
    found: dict[str, KnobKind] = {}
    for module in pkgutil.iter_modules(__path__):
        kind = getattr(importlib.import_module(f"{__name__}.{module.name}"), "KIND", None)
        if kind is not None:
            found[kind.name] = kind
    return found


def kind_named(name: str, *, where: str = "plan") -> KnobKind:
    kinds = registry()
    if name not in kinds:
        raise PlanError(f"{where}: unknown knob kind {name!r}; known kinds: {', '.join(sorted(kinds))}")
    return kinds[name]


def pipeline(names: Sequence[str]) -> list[KnobKind]:
    """The kinds ``names`` in the order they are applied: by stage, then by rank."""
    kinds = [kind_named(n, where="space.kinds") for n in dict.fromkeys(names)]
    return sorted(kinds, key=lambda k: (STAGES.index(k.stage), k.rank, k.name))
