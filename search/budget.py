"""Trial budget and per-trial time limit, shared by any number of workers on one study."""
from __future__ import annotations

import signal
import threading
import time
from contextlib import contextmanager
from types import FrameType
from typing import Iterator

import optuna
from optuna.storages import fail_stale_trials
from optuna.trial import TrialState

WAITING_ATTR = "waiting_for_budget"


class BudgetReached(optuna.TrialPruned):
    """The study already holds its budget of completed trials; this one is not needed."""


class TrialTimeout(Exception):
    """The trial ran past ``search.trial_timeout``."""


def claim_slot(trial: optuna.Trial, budget: int | None, *, poll: float = 1.0) -> None:
    """Return when ``trial`` may run without the study overshooting its budget.

    A slot is free while completed trials plus trials other workers are running stay
    under ``budget``. When none is free the trial waits, marked as waiting, until a
    running trial finishes (then the budget may be met: :class:`BudgetReached`) or its
    worker is found dead by heartbeat (then its slot frees up). Among waiting trials the
    lowest number goes first, so two workers can never wait for each other.
    """
    check_interrupt()
    if budget is None:
        return
    study = trial.study
    waiting = False
    while True:
        trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.RUNNING))
        complete = sum(t.state == TrialState.COMPLETE for t in trials)
        ahead = sum(t.state == TrialState.RUNNING and t.number != trial.number
                    and (not t.user_attrs.get(WAITING_ATTR) or t.number < trial.number) for t in trials)
        if complete >= budget:
            study.stop()
            raise BudgetReached(f"the study already has {complete} completed trials (budget {budget})")
        if complete + ahead < budget:
            if waiting:
                trial.set_user_attr(WAITING_ATTR, False)
            return
        if not waiting:
            trial.set_user_attr(WAITING_ATTR, True)
            waiting = True
        fail_stale_trials(study)
        time.sleep(poll)


class _Shield:
    depth = 0
    pending: TrialTimeout | None = None


class _Interrupt:
    pending = False  # a Ctrl-C arrived inside interruptible() and the block has not ended yet
    signum = signal.SIGINT  # the signal that asked for the last stop


# Each stop signal with the handler a process has when nobody took it over or ignored it. SIGTERM is what
# `kill`, schedulers and service managers send: it stops a search the way Ctrl-C does, with the running
# trial recorded, instead of leaving it RUNNING until a heartbeat declares it dead.
STOP_SIGNALS = {signal.SIGINT: signal.default_int_handler, signal.SIGTERM: signal.SIG_DFL}


def _on_stop(signum: int, frame: FrameType | None) -> None:
    _Interrupt.pending = True
    _Interrupt.signum = signum
    signal.default_int_handler(signum, frame)


def last_stop_signal() -> int:
    """The signal behind the last KeyboardInterrupt :func:`interruptible` raised (SIGINT or SIGTERM)."""
    return int(_Interrupt.signum)


@contextmanager
def interruptible() -> Iterator[None]:
    """Ctrl-C or SIGTERM ends the block with KeyboardInterrupt, even when the first one is dropped.

    Python runs the SIGINT handler wherever the main thread happens to be, and that can be a
    weakref callback or ``__del__`` the garbage collector runs in the middle of SQLAlchemy,
    ``copy.deepcopy`` or torch code. An exception raised there is printed as "Exception ignored
    in" and discarded (python/cpython#95959), and the search went on as if Ctrl-C had never
    been pressed. So the interrupt is also remembered: :func:`check_interrupt` raises it again
    at the next trial or stage boundary, and the block raises it if it ends without one.
    A signal that is ignored here, or that someone else handles, is left alone.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    taken = [s for s, untouched in STOP_SIGNALS.items() if signal.getsignal(s) is untouched]
    _Interrupt.pending, _Interrupt.signum = False, signal.SIGINT
    for signum in taken:
        signal.signal(signum, _on_stop)
    try:
        yield
    finally:
        for signum in taken:
            signal.signal(signum, STOP_SIGNALS[signum])
        pending, _Interrupt.pending = _Interrupt.pending, False
    if pending:
        raise KeyboardInterrupt


def check_interrupt() -> None:
    """Raise the Ctrl-C that arrived inside :func:`interruptible` if it got lost on the way."""
    if _Interrupt.pending:
        raise KeyboardInterrupt


@contextmanager
def shielded() -> Iterator[None]:
    """A storage write inside a time-limited trial: a timeout that falls due waits until it is done.

    Raised in the middle of a database commit, the timeout would surface as the storage's
    own error and hide the reason the trial failed. The end of the outermost write is also
    where a Ctrl-C or a timeout that was dropped (see :func:`interruptible`) is raised again.
    """
    _Shield.depth += 1
    try:
        yield
    finally:
        _Shield.depth -= 1
    if _Shield.depth == 0:
        check_interrupt()
        if _Shield.pending is not None:
            timeout, _Shield.pending = _Shield.pending, None
            raise timeout


@contextmanager
def time_limit(seconds: float | None) -> Iterator[None]:
    """Raise :class:`TrialTimeout` in the main thread after ``seconds``; no limit when None."""
    if not seconds:
        yield
        return

    def expire(signum: int, frame: object) -> None:
        timeout = TrialTimeout(f"trial ran past search.trial_timeout={seconds:g} s")
        # Kept until the limit ends, not only while shielded: raised inside a finalizer the
        # timeout is dropped like a Ctrl-C, and the next shielded write raises it again.
        _Shield.pending = timeout
        if _Shield.depth:
            return
        raise timeout

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        _Shield.pending = None
