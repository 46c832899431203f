"""Stop a fine-tune that cannot bring its plan within the accuracy-drop constraint.

Optuna's pruners compare one objective across trials, and this study has several; the
rule here compares each trial with the constraint instead, so it needs no other trial.

The rule, at a check after ``step`` of ``steps`` fine-tune updates (``checks[k] * steps``):
the pruned torch model, in eval mode, and the baseline answer the same seeded subset of the
validation split; ``drop`` is the baseline's accuracy minus the model's, in points, and
``se`` its standard error (from the per-sample differences, so the pairing is used). The
trial stops when

    drop > max_drop + slack[k] + z * se

where ``max_drop`` is the ``accuracy_drop`` constraint, or the accuracy drop of the plan's rival
when that is lower: a feasible member already better on every other objective, found before
fine-tuning (search/trials/prescreen.py). A plan that cannot end more accurate than its rival
cannot enter the front, however feasible it would be (``front``, on by default). Why each term
is there:

- ``slack[k]``: the steps left after the check still recover accuracy, most of it early
  (the learning rate decays on a cosine), so an earlier check gets a larger allowance.
  On the default demo a plan recovered at most 51 % of its drop after 34 % of the steps
  and 26 % after 67 % (experiments/early_stop/), so a plan that ends at a 1.0-point limit
  shows at most about 2.0 and 1.3 points there; the defaults (3.0 and 1.5 points of slack)
  allow 4.0 and 2.5 before the noise term.
- ``z * se``: the subset is a sample of the validation split; its drop may overstate the
  full split's by chance. With z = 2 a plan whose true drop is exactly max_drop + slack
  crosses the bound by chance about 2 % of the time (one-sided normal tail).
- Nothing for quantization: the trial's real score is the quantized ONNX file, which
  usually loses a little more than the torch fp32 model, so the fp32 drop at a check
  already underestimates the final drop. Leaving that out only makes the rule stop less.

The slack is a guess made for every model; the study learns a tighter one as it runs (``learn``).
Each fine-tune the rule lets through records its subset drop at every check, and its trial's
final drop (the quantized file, all of validation) says how much of that the rest of the
fine-tune recovered. Once ``learn_after`` finished fine-tunes were at least ``LEARN_MIN_DROP``
points down at a check, the largest share of the drop any of them recovered, plus
``learn_margin``, is taken as what a plan can still recover there, and the trial also stops when

    drop > max(max_drop / (1 - share), LEARN_MIN_DROP) + z * se

Shares are only learned from drops of at least ``LEARN_MIN_DROP`` (a small drop's share is
mostly noise), so the learned bound is never below it either. The final drop includes what
quantizing costs this model, which the fixed slack cannot see.

The check leaves no trace on a trial it does not stop: eval mode updates no BatchNorm
statistics and draws no random numbers, so the fine-tuned weights are the same bits.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterable, Sequence

import numpy as np
import optuna
import torch

if TYPE_CHECKING:
    from torch import nn

    from evaluators.base import Constraint, EvalData
    from search.trials.prescreen import Rival

CONSTRAINED = "accuracy_drop"  # the only constraint a partly fine-tuned torch model can estimate
BATCH = 500
LEARN_MIN_DROP = 2.0  # points; see the module docstring
MAX_SHARE = 0.95      # a learned share is capped here, so the bound stays finite

Checkpoint = tuple[int, float, float, float]
"""One check a fine-tune passed: ``(step, subset drop, its standard error, bound)``."""


class HopelessTrial(optuna.TrialPruned):
    """The fine-tune cannot bring the plan within the accuracy-drop constraint; Optuna records it PRUNED."""

    def __init__(self, reason: str, *, step: int, steps: int, drop: float, bound: float,
                 rival: int | None = None) -> None:
        super().__init__(reason)
        self.reason, self.step, self.steps, self.drop, self.bound = reason, step, steps, drop, bound
        self.rival = rival  # the member the plan could not beat, when that set the bound
        self.timings: dict[str, float] = {}  # the stages the trial ran, filled in by run_trial

    def record(self) -> dict[str, Any]:
        """JSON-able, for the trial's user attributes."""
        out = {"step": self.step, "steps": self.steps, "subset_drop": round(self.drop, 4),
               "bound": round(self.bound, 4)}
        return out if self.rival is None else {**out, "rival": self.rival}


@dataclass(frozen=True)
class EarlyStop:
    """``search.early_stop``: when to check, on how many validation samples, and how much slack."""

    enabled: bool = True
    checks: Sequence[float] = (0.34, 0.67)  # fractions of the fine-tune steps
    subset: int = 1000                      # validation samples, seeded and fixed per study
    slack: Sequence[float] = (3.0, 1.5)     # points above the constraint allowed at each check
    z: float = 2.0                          # standard errors of the subset drop allowed on top
    front: bool = True                      # also hold a plan to its rival's drop (see the module)
    learn: bool = True                      # tighten the slack from this study's finished fine-tunes
    learn_after: int = 4                    # finished fine-tunes at least LEARN_MIN_DROP down at a check
    learn_margin: float = 0.15              # added to the largest share of its drop one recovered

    def __post_init__(self) -> None:
        object.__setattr__(self, "checks", tuple(float(c) for c in self.checks))
        object.__setattr__(self, "slack", tuple(float(s) for s in self.slack))
        if not all(0 < c < 1 for c in self.checks) or list(self.checks) != sorted(set(self.checks)):
            raise ValueError(f"search.early_stop.checks={list(self.checks)}; allowed: increasing fractions of the "
                             "fine-tune steps, each strictly between 0 and 1")
        if len(self.slack) != len(self.checks) or any(s < 0 for s in self.slack):
            raise ValueError(f"search.early_stop.slack={list(self.slack)}; allowed: one value >= 0 per check "
                             f"({len(self.checks)} checks)")
        for key in ("front", "learn"):
            if not isinstance(getattr(self, key), bool):
                raise ValueError(f"search.early_stop.{key}={getattr(self, key)!r}; allowed: true or false")
        if self.learn_after < 1 or not 0 <= self.learn_margin < 1:
            raise ValueError(f"search.early_stop needs learn_after >= 1 and learn_margin in [0, 1); got "
                             f"learn_after={self.learn_after}, learn_margin={self.learn_margin}")
        if self.subset < 1 or self.z < 0:
            raise ValueError(f"search.early_stop needs subset >= 1 and z >= 0; got subset={self.subset}, "
                             f"z={self.z}")

    def schedule(self, steps: int) -> dict[int, float]:
        """``{step: slack}`` for ``steps`` updates; a check on the last step is dropped (the trial is scored next)."""
        out: dict[int, float] = {}
        for fraction, slack in zip(self.checks, self.slack):
            step = max(1, round(fraction * steps))
            if step < steps:
                out.setdefault(step, slack)
        return out

    def bound(self, max_drop: float, slack: float, se: float) -> float:
        """The largest subset drop a trial may show at a check and go on."""
        return max_drop + slack + self.z * se

    def learned_bound(self, max_drop: float, share: float, se: float) -> float:
        """The bound for a plan that recovers at most ``share`` of its drop after the check."""
        return max(max_drop / (1 - share), LEARN_MIN_DROP) + self.z * se

    def shares(self, finished: Iterable[tuple[Sequence[Checkpoint], float]]) -> dict[int, float]:
        """``{check step: the share of its drop a plan can still recover}``, learned from ``finished``
        fine-tunes (their checkpoints and final drop); a step with too few of them is left out."""
        if not self.learn:
            return {}
        seen: dict[int, list[float]] = {}
        for checkpoints, final in finished:
            for step, drop, *_ in checkpoints:
                if drop >= LEARN_MIN_DROP:
                    seen.setdefault(int(step), []).append((drop - final) / drop)
        return {step: min(max(found) + self.learn_margin, MAX_SHARE) for step, found in seen.items()
                if len(found) >= self.learn_after}


def paired_drop(baseline_correct: np.ndarray, model_correct: np.ndarray) -> tuple[float, float]:
    """The accuracy drop in points on the same samples, and its standard error."""
    diff = baseline_correct.astype(np.float64) - model_correct.astype(np.float64)
    se = float(diff.std(ddof=1) / math.sqrt(len(diff))) if len(diff) > 1 else 0.0
    return 100.0 * float(diff.mean()), 100.0 * se


class StopRule:
    """:class:`EarlyStop` bound to one search: the subset, the baseline's answers on it, the constraint.

    The baseline is scored once, at the first check, and kept: every trial compares with it.
    """

    def __init__(self, settings: EarlyStop, *, max_drop: float, baseline: nn.Module, val: EvalData,
                 seed: int = 0) -> None:
        self.settings, self.max_drop, self.baseline = settings, max_drop, baseline
        n = min(settings.subset, len(val.labels))
        picked = np.sort(np.random.default_rng(seed).choice(len(val.labels), size=n, replace=False))
        self.inputs = torch.from_numpy(np.ascontiguousarray(val.inputs[picked])).float()
        self.labels = torch.from_numpy(np.asarray(val.labels[picked])).long()
        self._baseline_correct: np.ndarray | None = None

    @property
    def baseline_correct(self) -> np.ndarray:
        if self._baseline_correct is None:
            self._baseline_correct = self.correct(self.baseline)
        return self._baseline_correct

    def correct(self, model: nn.Module) -> np.ndarray:
        """Which subset samples ``model`` (in eval mode) classifies correctly; its train/eval mode is restored."""
        was_training = model.training
        model.eval()
        with torch.no_grad():
            hits = [model(self.inputs[i:i + BATCH]).argmax(1) == self.labels[i:i + BATCH]
                    for i in range(0, len(self.labels), BATCH)]
        model.train(was_training)
        return torch.cat(hits).numpy()

    def check(self, steps: int, *, rival: Rival | None = None,
              finished: Iterable[tuple[Sequence[Checkpoint], float]] = ()) -> Check:
        """The checks of one fine-tune of ``steps`` updates, for a plan that ``rival`` (if any) beats;
        ``finished``: the study's fine-tunes of ``steps`` that ran to the end (see :meth:`EarlyStop.shares`)."""
        return Check(self, steps, rival if self.settings.front else None, self.settings.shares(finished))

    def judge(self, model: nn.Module, *, step: int, steps: int, slack: float, rival: Rival | None = None,
              share: float | None = None) -> Checkpoint:
        """The checkpoint of ``model`` at ``step``; raise :class:`HopelessTrial` when it is past the bound.

        ``share``: what the study learned a plan still recovers after this check (None: not learned yet).
        """
        drop, se = paired_drop(self.baseline_correct, self.correct(model))
        held_to = rival if rival is not None and rival.drop < self.max_drop else None
        limit = self.max_drop if held_to is None else held_to.drop
        bound = self.settings.bound(limit, slack, se)
        allowance = f"+ slack {slack:g}"
        learned = math.inf if share is None else self.settings.learned_bound(limit, share, se)
        if learned < bound:
            bound = learned
            allowance = f"/ (1 - {share:.2f}, the most the study's finished fine-tunes recovered from here + margin)"
        if drop > bound:
            against = (f"{CONSTRAINED} <= {self.max_drop:g}" if held_to is None else
                       f"trial {held_to.number}, better on every other objective, dropped {held_to.drop:.2f}")
            reason = (f"fine-tune step {step}/{steps}: accuracy drop {drop:.2f} points on "
                      f"{len(self.labels)} validation samples > bound {bound:.2f} ({against}, {allowance}, "
                      f"+ {self.settings.z:g} x s.e. {se:.2f})")
            raise HopelessTrial(reason, step=step, steps=steps, drop=drop, bound=bound,
                                rival=None if held_to is None else held_to.number)
        return step, drop, se, bound


class Check:
    """What ``finetune(check=..., check_at=...)`` takes: the rule, called at the scheduled steps.

    ``passed`` holds the checkpoints the fine-tune got through, for its trial's record.
    """

    def __init__(self, rule: StopRule, steps: int, rival: Rival | None = None,
                 shares: dict[int, float] | None = None) -> None:
        self.rule, self.steps, self.rival, self.shares = rule, steps, rival, shares or {}
        self.slack = rule.settings.schedule(steps)
        self.at = frozenset(self.slack)
        self.passed: list[Checkpoint] = []

    def __call__(self, step: int, model: nn.Module) -> None:
        if step in self.slack:
            self.passed.append(self.rule.judge(model, step=step, steps=self.steps, slack=self.slack[step],
                                               rival=self.rival, share=self.shares.get(step)))


def stop_rule(settings: EarlyStop | None, constraints: Sequence[Constraint], *, baseline: nn.Module,
              val: EvalData, seed: int = 0) -> StopRule | None:
    """The rule for a search, or None: switched off, or no ``accuracy_drop`` constraint to hold trials to."""
    limits = [c.max for c in constraints if c.metric == CONSTRAINED]
    if settings is None or not settings.enabled or not limits:
        return None
    return StopRule(settings, max_drop=min(limits), baseline=baseline, val=val, seed=seed)
