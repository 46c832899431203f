"""The per-trial time limit, storage writes it must not interrupt, and a Ctrl-C that must not get lost."""
from __future__ import annotations

import signal
import sys
import time
import weakref

import optuna
import pytest
from optuna.trial import TrialState

from search.budget import TrialTimeout, claim_slot, interruptible, last_stop_signal, shielded, time_limit


@pytest.fixture(autouse=True)
def ctrl_c_as_in_a_terminal():
    """Python's own SIGINT handler, whatever this process inherited: a job started in the background
    by a non-interactive shell (nohup, some CI runners) ignores SIGINT, and interruptible() rightly
    leaves an ignored Ctrl-C alone."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_a_timeout_during_a_shielded_write_waits_for_the_write_to_finish():
    finished = False
    with pytest.raises(TrialTimeout, match="search.trial_timeout=0.01 s"):
        with time_limit(0.01):
            with shielded():
                time.sleep(0.05)  # the alarm falls due here
                finished = True
            raise AssertionError("the pending timeout must be raised when the write ends")
    assert finished


def test_a_timeout_outside_a_shield_interrupts_at_once():
    with pytest.raises(TrialTimeout):
        with time_limit(0.01):
            time.sleep(1.0)


@pytest.fixture
def dropped(monkeypatch) -> list[type[BaseException]]:
    """Exceptions Python printed as "Exception ignored in" and discarded."""
    seen: list[type[BaseException]] = []
    monkeypatch.setattr(sys, "unraisablehook", lambda unraisable: seen.append(unraisable.exc_type))
    return seen


def signal_in_a_finalizer(signum: int) -> None:
    """``signum`` arrives while the garbage collector runs a weakref callback, as it did inside
    SQLAlchemy and ``copy.deepcopy`` during a search: its handler's exception goes nowhere."""
    class Collected:
        pass

    thing = Collected()
    ref = weakref.ref(thing, lambda _: signal.raise_signal(signum))
    del thing
    assert ref() is None


def test_a_ctrl_c_dropped_by_a_finalizer_is_raised_when_the_storage_write_ends(dropped):
    written = False
    with pytest.raises(KeyboardInterrupt):
        with interruptible():
            with shielded():
                signal_in_a_finalizer(signal.SIGINT)
                written = True
            raise AssertionError("the dropped Ctrl-C must be raised when the write ends")
    assert written and dropped == [KeyboardInterrupt]


def test_a_ctrl_c_dropped_between_trials_fails_the_next_trial_and_stops_the_study(dropped):
    study = optuna.create_study()

    def objective(trial: optuna.Trial) -> float:
        claim_slot(trial, None)
        if trial.number == 0:
            signal_in_a_finalizer(signal.SIGINT)  # after the trial's last boundary
        return 0.0

    with pytest.raises(KeyboardInterrupt):
        with interruptible():
            study.optimize(objective, n_trials=5, catch=(Exception,))
    assert [t.state for t in study.trials] == [TrialState.COMPLETE, TrialState.FAIL]
    assert dropped == [KeyboardInterrupt]


def test_a_ctrl_c_dropped_after_the_last_boundary_ends_the_block(dropped):
    with pytest.raises(KeyboardInterrupt):
        with interruptible():
            signal_in_a_finalizer(signal.SIGINT)
    assert dropped == [KeyboardInterrupt]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    with shielded():
        pass  # a Ctrl-C that ended its block is not raised a second time


def test_an_ignored_ctrl_c_stays_ignored():
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with interruptible():
            signal.raise_signal(signal.SIGINT)
            with shielded():
                pass
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)


def test_a_timeout_dropped_by_a_finalizer_is_raised_when_the_next_storage_write_ends(dropped):
    with pytest.raises(TrialTimeout):
        with time_limit(60):
            signal_in_a_finalizer(signal.SIGALRM)
            with shielded():
                pass
            raise AssertionError("the dropped timeout must be raised when the write ends")
    assert dropped == [TrialTimeout]


def test_sigterm_stops_the_block_like_ctrl_c_and_its_default_comes_back(dropped):
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    with pytest.raises(KeyboardInterrupt):
        with interruptible():
            # raised only when taken over: SIGTERM's default action would end the test run itself
            assert signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL
            signal_in_a_finalizer(signal.SIGTERM)
    assert dropped == [KeyboardInterrupt] and last_stop_signal() == signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
