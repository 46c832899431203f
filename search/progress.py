"""One line per stage and per finished trial: where the search is, and how the front grows."""
from __future__ import annotations

import logging
import time

import optuna
from optuna.trial import FrozenTrial, TrialState

from search.study import completed

log = logging.getLogger("autosqueeze")


class Progress:
    """Logs ``trial 7 [4/20, 3 min left]: finetune`` as stages start, and a summary as trials end."""

    def __init__(self, budget: int | None, timeout: float | None, done: int = 0) -> None:
        self.budget, self.timeout = budget, timeout
        self.start = time.monotonic()
        self.done = done  # a resumed study starts from the trials it already holds
        self.front_size = 0

    def where(self) -> str:
        parts = [f"{self.done}/{self.budget}" if self.budget else f"{self.done} done"]
        if self.timeout:
            left = max(self.timeout - (time.monotonic() - self.start), 0.0)
            parts.append(f"{left / 60:.0f} min left")
        return ", ".join(parts)

    def stage(self, number: int, stage: str) -> None:
        log.info("trial %d [%s]: %s", number, self.where(), stage)

    def trial_done(self, study: optuna.Study, trial: FrozenTrial, front_size: int) -> None:
        self.done = completed(study)
        self.front_size = front_size
        if trial.state == TrialState.COMPLETE and "result" in trial.user_attrs:
            m = trial.user_attrs["result"]["metrics"]
            total = trial.user_attrs["result"]["timings"].get("total", 0.0)
            log.info("trial %d done in %.1f s: accuracy %.2f%% (drop %.2f), %.1f KB, %.3f ms | %s, front %d",
                     trial.number, total, m.get("accuracy", float("nan")), m.get("accuracy_drop", float("nan")),
                     m.get("size_bytes", 0) / 1e3, m.get("latency_ms", float("nan")), self.where(), front_size)
        elif trial.state == TrialState.FAIL:
            log.warning("trial %d failed: %s | %s", trial.number, trial.user_attrs.get("error", "see the study"),
                        self.where())
        elif trial.state == TrialState.PRUNED and "pruned_reason" in trial.user_attrs:
            log.info("trial %d stopped early after %.1f s: %s | %s", trial.number,
                     trial.user_attrs.get("timings", {}).get("total", 0.0), trial.user_attrs["pruned_reason"],
                     self.where())
