from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from evaluators import Accuracy, EvalData


def predictions(path: Path, inputs: np.ndarray) -> np.ndarray:
    """Arg-max of ORT outputs, computed without the evaluator (plain session, one sample at a time)."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.array([session.run(None, {"input": inputs[i:i + 1]})[0].argmax() for i in range(len(inputs))])


def by_hand(predicted: np.ndarray, labels: np.ndarray) -> float:
    return 100.0 * sum(int(p) == int(y) for p, y in zip(predicted, labels)) / len(labels)


@pytest.mark.parametrize("kind", ["fp32", "qdq"])
def test_labels_from_own_predictions_give_100(models: dict[str, Path], inputs: np.ndarray, kind: str) -> None:
    labels = predictions(models[kind], inputs)
    assert Accuracy().measure(models[kind], EvalData(inputs, labels)) == {"accuracy": 100.0}
    assert Accuracy(batch_size=7).measure(models[kind], EvalData(inputs, labels))["accuracy"] == 100.0


def test_random_labels_match_hand_count(models: dict[str, Path], inputs: np.ndarray) -> None:
    labels = np.random.default_rng(1).integers(0, 10, len(inputs))
    expected = by_hand(predictions(models["fp32"], inputs), labels)
    got = Accuracy(batch_size=64).measure(models["fp32"], EvalData(inputs, labels))["accuracy"]
    assert abs(got - expected) <= 1e-9
    assert 0.0 < got < 30.0  # chance is 10 %
    assert Accuracy(batch_size=64).measure(models["fp32"], EvalData(inputs, labels))["accuracy"] == got


@pytest.mark.parametrize("kind", ["fixed1", "fixed4"])
def test_fixed_batch_model(models: dict[str, Path], inputs: np.ndarray, kind: str) -> None:
    subset = inputs[:299]  # 299 is not a multiple of 4: the last batch is padded
    labels = predictions(models["fp32"], subset)
    labels[::3] = (labels[::3] + 1) % 10  # a third wrong on purpose
    expected = by_hand(predictions(models["fp32"], subset), labels)
    got = Accuracy(batch_size=256).measure(models[kind], EvalData(subset, labels))["accuracy"]
    assert abs(got - expected) <= 1e-9


def test_bad_options() -> None:
    with pytest.raises(ValueError, match="batch_size"):
        Accuracy(batch_size=0)
    with pytest.raises(ValueError, match="threads"):
        Accuracy(threads=0)
    assert Accuracy().metrics == ("accuracy",)
