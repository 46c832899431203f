"""The report's profile section as plain rows: per prune group and per layer, numbers formatted to read at a glance."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Mapping, Sequence

from search.profiling.profile import Profile

if TYPE_CHECKING:
    from search.trials.trial import TrialResult


@dataclass(frozen=True)
class Rows:
    headers: tuple[str, ...]
    rows: list[list[str]]


def _fmt(value: float | None, fmt: str) -> str:
    return "–" if value is None or math.isnan(value) else format(value, fmt)


def group_rows(profile: Profile) -> Rows:
    """One row per group: accuracy lost at each ratio, and what the largest ratio removes."""
    top = max(profile.ratios, default=0.0)
    headers = (*(f"drop @ {r:g} (points)" for r in profile.ratios), f"params removed @ {top:g} (%)",
               f"MACs removed @ {top:g} (%)")
    rows = []
    for group in profile.groups:
        drops = [_fmt(getattr(group.at(r), "drop", None), ".2f") for r in profile.ratios]
        last = group.at(top)
        rows.append([group.name, *drops, _fmt(100 * last.params_share if last else None, ".1f"),
                     _fmt(100 * last.macs_share if last else None, ".1f")])
    return Rows(("group (root layer)", *headers), rows)


def layer_rows(profile: Profile, offered: Mapping[str, Sequence[str]]) -> Rows:
    """One row per layer: int8 error (own and at its output), what fp32 wins back (SQNR outliers only),
    latency and size shares, int4 on offer."""
    headers = ("layer", "int8 SQNR added (dB)", "int8 SQNR at output (dB)", "fp32 gain (points)", "latency (%)",
               "size (%)", "int4 offered")
    rows = []
    for layer in profile.layers:
        choices = offered.get(layer.name)
        int4 = "–" if choices is None else ("yes" if "int4" in choices else "no")
        rows.append([layer.name, _fmt(layer.int8_added_db, ".1f"), _fmt(layer.int8_sqnr_db, ".1f"),
                     _fmt(layer.fp32_gain, ".2f"), _fmt(100 * layer.latency_share, ".1f"),
                     _fmt(100 * layer.size_share, ".1f"), int4])
    return Rows(headers, rows)


def cost_line(profile: Profile, results: Sequence[TrialResult]) -> str:
    """How long the profile took, and its share of the search (profile plus every completed trial)."""
    seconds = profile.seconds
    total = seconds.get("total", 0.0)
    trials = sum(r.timings.get("total", 0.0) for r in results)
    parts = ", ".join(f"{k} {v:.1f} s" for k, v in seconds.items() if k != "total")
    share = f"; {100 * total / (total + trials):.1f} % of the search's compute" if trials else ""
    return (f"measured once in {total:.1f} s ({parts}) on {profile.samples} validation samples{share}; "
            f"{100 * profile.latency_unassigned:.1f} % of the latency belongs to no layer")
