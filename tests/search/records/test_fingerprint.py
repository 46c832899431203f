"""The fingerprint a study records: what its numbers depend on, and a resume that changes it."""
from __future__ import annotations

import numpy as np
import optuna
import pytest

from evaluators import Accuracy, Constraint, Latency
from evaluators.base import EvalData
from search.trials.finetune import FinetuneSettings
from search.records.fingerprint import FingerprintMismatch, changes, check_fingerprint, data_digest, fingerprint
from tinynet import tiny_net
from zoo.data import DataSplits


def make(small_splits, **overrides):
    parts = dict(data=small_splits, baseline=tiny_net(), constraints=[Constraint("accuracy_drop", 1.0)],
                 evaluators=[Accuracy(), Latency()], finetune=FinetuneSettings(steps=10))
    return fingerprint(**{**parts, **overrides})


def test_each_split_has_its_own_hash(small_splits):
    other_val = EvalData(small_splits.val.inputs[::-1].copy(), small_splits.val.labels[::-1].copy())
    moved = DataSplits(train=small_splits.train, calib=small_splits.calib, val=other_val, test=small_splits.test,
                       num_classes=small_splits.num_classes, preprocessing=small_splits.preprocessing)
    before, after = data_digest(small_splits), data_digest(moved)
    assert [k for k in before if before[k] != after[k]] == ["val"]


def test_changes_name_the_dotted_parts_that_differ(small_splits):
    first = make(small_splits)
    assert changes(first, first) == []
    other = make(small_splits, evaluators=[Accuracy(threads=1), Latency(runs=50)])
    assert changes(first, other) == ["evaluators.Latency"]        # accuracy threads change no number
    assert changes(first, make(small_splits, finetune=FinetuneSettings(steps=11))) == ["finetune.steps"]


def test_a_new_study_records_it_and_a_changed_resume_is_refused(small_splits):
    study = optuna.create_study(directions=["maximize"], study_name="fp")
    first = make(small_splits)
    check_fingerprint(study, first)
    check_fingerprint(study, make(small_splits))                          # same inputs: resumes
    with pytest.raises(FingerprintMismatch, match=r"other constraints \(constraints: .*max.*1\.0.*0\.5"):
        check_fingerprint(study, make(small_splits, constraints=[Constraint("accuracy_drop", 0.5)]))
    assert study.user_attrs["fingerprint"]["constraints"] == [{"metric": "accuracy_drop", "max": 1.0}]
