"""Where a search is: a live display on a terminal, and one log line per finished trial.

On a terminal (stderr is a tty that rich finds interactive, and INFO is on) a rich ``Live`` display shows
the trial counter, the running trial's stage and fine-tune step, the front's size, its best size ratio and
speedup, and the ETA; log records (warnings included) print above it. Elsewhere (a log file, CI, nohup)
only the per-trial lines appear; the per-stage lines are DEBUG.
"""
from __future__ import annotations

import logging
import math
import statistics
import sys
import threading
import time
from contextlib import contextmanager
from typing import TYPE_CHECKING, Iterator, Sequence

import optuna
from optuna.trial import FrozenTrial, TrialState
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.spinner import Spinner
from rich.table import Table
from rich.text import Text

from search.study import completed

if TYPE_CHECKING:
    from search.trials.trial import TrialResult

log = logging.getLogger("autosqueeze")


def duration(seconds: float) -> str:
    """``42 s``, ``3 min 05 s``, ``2 h 10 min``."""
    s = round(seconds)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


def estimate(study: optuna.Study, budget: int | None, done: int) -> float | None:
    """Seconds until the study holds ``budget`` completed trials: a completed trial's cost × rounds left.

    A completed trial costs the median completed wall time (of the fine-tuned ones, once there are any)
    plus its share of the trials that ended without completing (stopped early, skipped before
    fine-tuning, failed): they do not count toward the budget, so each completed trial carries them. The rounds left are the remaining trials divided
    by the workers running, counted as this process plus the trials other processes (or machines) are
    running now. None before a trial completed.
    """
    if not budget:
        return None
    remaining = max(budget - done, 0)
    if remaining == 0:
        return 0.0
    trials = study.get_trials(deepcopy=False)

    def walls(*states: TrialState, fine_tuned: bool = False) -> list[float]:
        return [(t.datetime_complete - t.datetime_start).total_seconds() for t in trials
                if t.state in states and t.datetime_start and t.datetime_complete
                and (not fine_tuned or (t.user_attrs.get("result") or {}).get("curve"))]

    completed = walls(TrialState.COMPLETE)
    if not completed:
        return None
    # The unpruned reference plans come first and skip fine-tuning (seconds against minutes); the plans that
    # follow almost all fine-tune, so once one has, those set the pace.
    tuned = walls(TrialState.COMPLETE, fine_tuned=True)
    per_trial = statistics.median(tuned or completed) + sum(walls(TrialState.PRUNED, TrialState.FAIL)) / len(completed)
    workers = 1 + sum(t.state == TrialState.RUNNING for t in trials)
    return per_trial * math.ceil(remaining / workers)


def best(feasible: Sequence[TrialResult], metric: str) -> float | None:
    values = [r.metrics[metric] for r in feasible if metric in r.metrics]
    return max(values) if values else None


class Progress:
    """Told of every stage, fine-tune step and finished trial; shows them live or logs one line per trial."""

    def __init__(self, budget: int | None, timeout: float | None, done: int = 0, *,
                 finetune_steps: int | None = None, live: bool | None = None) -> None:
        self.budget, self.timeout, self.finetune_steps = budget, timeout, finetune_steps
        self.start = time.monotonic()
        self.done = done  # a resumed study starts from the trials it already holds
        self.front_size = 0
        self.best_size_ratio: float | None = None
        self.best_speedup: float | None = None
        self.current: tuple[int, str] | None = None  # the running trial and its stage
        self.step_at: int | None = None  # its fine-tune step
        self.ended = False
        self._estimate: tuple[float, float] | None = None  # (seconds left, when it was made)
        self._live = live  # None: a live display exactly when stderr is an interactive terminal
        self._display: Live | None = None
        self._lock = threading.Lock()

    def eta(self) -> float | None:
        """Seconds left: the estimate counted down since the last finished trial, capped by ``timeout``."""
        now = time.monotonic()
        left = None if self._estimate is None else max(self._estimate[0] - (now - self._estimate[1]), 0.0)
        if self.timeout:
            by_clock = max(self.timeout - (now - self.start), 0.0)
            left = by_clock if left is None else min(left, by_clock)
        return left

    def counter(self) -> str:
        return f"{self.done}/{self.budget}" if self.budget else f"{self.done} done"

    def eta_text(self) -> str:
        left = self.eta()
        return "ETA unknown" if left is None else f"ETA {duration(left)}"

    def where(self) -> str:
        return f"{self.counter()}, {self.eta_text()}"

    def stage(self, number: int, stage: str) -> None:
        self.current, self.step_at = (number, stage), None
        log.debug("trial %d [%s]: %s", number, self.where(), stage)
        self._refresh()

    def step(self, number: int, step: int) -> None:
        """The running trial's fine-tune reached ``step`` (every ``log_every`` steps)."""
        if self.current and self.current[0] == number:
            self.step_at = step
            self._refresh()

    def trial_done(self, study: optuna.Study, trial: FrozenTrial, front_size: int, *,
                   feasible: Sequence[TrialResult] = ()) -> None:
        # The display's own thread redraws at any moment: everything is worked out first (the estimate
        # queries the study) and assigned under the lock its frames take, so no frame shows the new count
        # with the old ETA.
        done = completed(study)
        left = estimate(study, self.budget, done)
        with self._lock:
            self.done, self.front_size = done, front_size
            self.best_size_ratio = best(feasible, "size_ratio") or self.best_size_ratio
            self.best_speedup = best(feasible, "speedup") or self.best_speedup
            self._estimate = None if left is None else (left, time.monotonic())
        if self.current and self.current[0] == trial.number:
            self.current, self.step_at = None, None
        self._refresh()  # first: a line logged above the display redraws the display as last refreshed
        self._log_line(trial, front_size)

    def _log_line(self, trial: FrozenTrial, front_size: int) -> None:
        if trial.state == TrialState.COMPLETE and "result" in trial.user_attrs:
            m = trial.user_attrs["result"]["metrics"]
            total = trial.user_attrs["result"]["timings"].get("total", 0.0)
            log.info("trial %d done in %.1f s: accuracy %.2f%% (drop %.2f), %.1f KB, %.3f ms | %s, front %d, %s",
                     trial.number, total, m.get("accuracy", float("nan")), m.get("accuracy_drop", float("nan")),
                     m.get("size_bytes", 0) / 1e3, m.get("latency_ms", float("nan")), self.counter(), front_size,
                     self.eta_text())
        elif trial.state == TrialState.FAIL:
            log.warning("trial %d failed: %s | %s", trial.number, trial.user_attrs.get("error", "see the study"),
                        self.where())
        elif trial.state == TrialState.PRUNED and "pruned_reason" in trial.user_attrs:
            log.info("trial %d stopped early after %.1f s: %s | %s", trial.number,
                     trial.user_attrs.get("timings", {}).get("total", 0.0), trial.user_attrs["pruned_reason"],
                     self.where())

    def view(self) -> RenderableType:
        """What the live display shows, rebuilt at every refresh so the ETA counts down."""
        with self._lock:
            return self._view()

    def _view(self) -> RenderableType:
        if self.current is None:
            doing = Text("search ended" if self.ended else "sampling the next plan")
        else:
            number, stage = self.current
            doing = Text.assemble((f"trial {number}", "bold"), f": {stage}")
            if stage == "finetune" and self.step_at is not None:
                doing.append(f" {self.step_at}/{self.finetune_steps or '?'}")
        counts = Table.grid(padding=(0, 1))
        bar = ProgressBar(total=self.budget, completed=self.done, width=24) if self.budget else Text("")
        size = "–" if self.best_size_ratio is None else f"{self.best_size_ratio:.2f}x"
        speed = "–" if self.best_speedup is None else f"{self.best_speedup:.2f}x"
        counts.add_row(Text(f"trials {self.counter()}", style="bold"), bar,
                       Text(f"front {self.front_size} · best size ratio {size} · best speedup {speed} · "
                            f"{self.eta_text()}"))
        return Group(Spinner("dots", text=doing) if not self.ended else doing, counts)

    def _refresh(self) -> None:
        if self._display is not None:
            self._display.refresh()

    @contextmanager
    def shown(self) -> Iterator[None]:
        """The live display while the block runs, when stderr is an interactive terminal and INFO is on."""
        console = Console(stderr=True)
        wanted = self._live if self._live is not None else (
            console.is_interactive and sys.stderr.isatty() and log.isEnabledFor(logging.INFO))
        if not wanted:
            yield
            return
        with Live(console=console, get_renderable=self.view, refresh_per_second=4, redirect_stderr=True,
                  redirect_stdout=sys.stdout.isatty()) as live, _logging_above(live):
            self._display = live
            try:
                yield
            finally:
                self._display, self.current, self.ended = None, None, True


@contextmanager
def _logging_above(live: Live) -> Iterator[None]:
    """Log handlers that write to the terminal write through the display, which prints them above itself.

    ``logging.basicConfig`` keeps the stream it found; ``Live`` swaps ``sys.stderr`` (and ``sys.stdout``)
    for proxies only afterwards.
    """
    proxies = {getattr(p, "rich_proxied_file", None): p for p in (sys.stderr, sys.stdout)}
    proxies.pop(None, None)
    moved: list[tuple[logging.StreamHandler, object]] = []
    for logger in (logging.getLogger(), *(h for h in logging.root.manager.loggerDict.values()
                                          if isinstance(h, logging.Logger))):
        for handler in logger.handlers:
            if isinstance(handler, logging.StreamHandler) and handler.stream in proxies:
                moved.append((handler, handler.setStream(proxies[handler.stream])))
    try:
        yield
    finally:
        for handler, stream in moved:
            handler.setStream(stream)  # type: ignore[arg-type]
