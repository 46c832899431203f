"""``prune``: structured pruning, a channel ratio per torch-pruning group (mechanics in spaces/pruning.py)."""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Mapping

from spaces.base import PlanError, check_ratio
from spaces.kinds.base import ApplyEnv, KindBase, ModelInfo, check_keys
from spaces.layers import check_names, prunable_groups, resolve_members
from spaces.pruning import IMPORTANCES, PruneRatio, prune


@dataclass(frozen=True)
class PruneSpec:
    """How pruning knobs are made: the ratios each may take and the layers never pruned."""

    ratios: tuple[float, ...] | None = (0.0, 0.125, 0.25, 0.375, 0.5, 0.625)
    low: float = 0.0
    high: float = 0.625
    step: float = 0.125
    exclude: tuple[str, ...] = ()
    round_to: int | None = 4
    importance: str = "l2"

    def __post_init__(self) -> None:  # fail at config load, not in every trial
        if self.importance not in IMPORTANCES:
            raise PlanError(f"space.prune.importance={self.importance!r} is unknown; "
                            f"allowed: {', '.join(IMPORTANCES)}")
        PruneRatio("space.prune.ratios", self.ratios, self.low, self.high, self.step)


class PruneKind(KindBase):
    name = "prune"
    stage = "structure"
    rank = 0
    neutral = 0.0
    finetune = True

    def spec(self, section: Mapping[str, Any]) -> PruneSpec:
        p = dict(section)
        check_keys(self.name, p, [f.name for f in fields(PruneSpec)])
        ratios = p.pop("ratios", PruneSpec.ratios)
        return PruneSpec(ratios=None if ratios is None else tuple(ratios),
                         exclude=tuple(p.pop("exclude", ())), **p)

    def check(self, key: str, value: Any) -> float:
        return check_ratio(key, value)

    def knobs(self, info: ModelInfo, spec: PruneSpec) -> tuple[PruneRatio, ...]:
        check_names("space.prune.exclude", spec.exclude, info.layers)
        groups = prunable_groups(info.model, info.example_input, ignored=[info.head])
        skipped = resolve_members(groups, spec.exclude)
        return tuple(PruneRatio(f"prune.{root}", spec.ratios, spec.low, spec.high, spec.step)
                     for root in groups if root not in skipped)

    def apply_model(self, model, values: Mapping[str, float], spec: PruneSpec, env: ApplyEnv):
        return prune(model, values, env.example_input, ignored=[env.head, *spec.exclude],
                     round_to=spec.round_to, importance=spec.importance)

    def describe(self, value: float) -> str:
        return f"{value:g}" if value else ""


KIND = PruneKind()
