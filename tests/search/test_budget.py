"""The per-trial time limit, and storage writes it must not interrupt."""
from __future__ import annotations

import time

import pytest

from search.budget import TrialTimeout, shielded, time_limit


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
