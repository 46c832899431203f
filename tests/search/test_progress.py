"""Progress lines count from the trials a resumed study already holds."""
from __future__ import annotations

import logging

from search.progress import Progress


def test_a_resumed_search_counts_from_its_completed_trials(caplog):
    progress = Progress(budget=36, timeout=None, done=24)
    with caplog.at_level(logging.INFO, logger="autosqueeze"):
        progress.stage(24, "finetune")
    assert "trial 24 [24/36]: finetune" in caplog.text


def test_time_left_is_shown_with_a_timeout():
    assert Progress(budget=None, timeout=600, done=3).where() == "3 done, 10 min left"
