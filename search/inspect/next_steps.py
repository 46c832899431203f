"""What to run once a search has ended: its report, the suggested member's export and the MLflow UI, filled in."""
from __future__ import annotations

import shlex
from typing import TYPE_CHECKING, Sequence

from search.records.secrets import redact

if TYPE_CHECKING:
    from evaluators.base import Constraint, Objective
    from search.trials.trial import TrialResult

SIZES = ("size_bytes", "compressed_bytes")  # the file as written, and as shipped entropy-coded


def size_metric(objectives: Sequence[Objective]) -> str:
    """The size a study minimises: the compressed bytes when that is its objective (OTA updates), else the file."""
    chosen = [o.metric for o in objectives if o.metric in SIZES]
    return chosen[0] if chosen else "size_bytes"


def suggested(front: Sequence[TrialResult], size: str = "size_bytes") -> TrialResult | None:
    """The front member to export first: the smallest by ``size``. Every front member meets the constraints."""
    sized = [r for r in front if size in r.metrics]
    return min(sized, key=lambda r: (r.metrics[size], r.number)) if sized else None


def next_steps(front: Sequence[TrialResult], *, located: Sequence[str], constraints: Sequence[Constraint],
               tracking_uri: str | None, size: str = "size_bytes") -> str:
    """The commands, each under a line saying what it does; ``located`` are the overrides that find the study."""
    lines = ["next:", "  the report (front, plots, per-layer sensitivity, every member's export command):",
             "    " + shlex.join(["autosqueeze", "report", *located])]
    member = suggested(front, size)
    limits = " and ".join(f"{c.metric} <= {c.max:g}" for c in constraints)
    if member is None:
        lines.append("  no front member to export" + (f": no trial met {limits}" if limits else ""))
    else:
        within = f"; every front member meets {limits}" if limits else ""
        lines += [f"  export the suggested member, trial {member.number}: the smallest front member ({size}){within}:",
                  "    " + shlex.join(["autosqueeze", "export", *located, f"export.trial={member.number}"])]
    if tracking_uri and tracking_uri.startswith(("http://", "https://")):
        lines += ["  the MLflow runs, on the tracking server:", f"    {redact(tracking_uri)}"]
    elif tracking_uri:
        lines += ["  the MLflow runs (then open http://127.0.0.1:5000):",
                  "    " + shlex.join(["mlflow", "ui", "--backend-store-uri", redact(tracking_uri)])]
    return "\n".join(lines)
