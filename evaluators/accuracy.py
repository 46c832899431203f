"""Top-1 accuracy of the shipped artifact, run by its target's runtime on the CPU."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from evaluators._session import open_session
from evaluators.base import EvalData


@dataclass(frozen=True)
class Accuracy:
    """Percentage (0-100) of samples whose arg-max logit equals the label.

    Batched for speed; a model whose input has a fixed batch size is fed batches of
    exactly that size (the last one zero-padded, the padding's predictions dropped).
    """

    batch_size: int = 256
    threads: int = 2
    metrics: tuple[str, ...] = field(default=("accuracy",), init=False, repr=False)
    not_in_fingerprint = ("threads",)  # local workers split the cores; the count changes no prediction

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"accuracy: batch_size must be >= 1, got {self.batch_size}")
        if self.threads < 1:
            raise ValueError(f"accuracy: threads must be >= 1, got {self.threads}")

    def measure(self, model_path: Path, data: EvalData) -> dict[str, float]:
        if len(data.labels) == 0:
            raise ValueError("accuracy: no eval samples")
        session = open_session(model_path, threads=self.threads)
        fixed = session.batch
        batch = fixed or self.batch_size
        inputs = data.inputs.astype(np.float32, copy=False)
        correct = 0
        for start in range(0, len(inputs), batch):
            chunk = inputs[start:start + batch]
            real = len(chunk)
            if fixed and real < batch:
                pad = np.zeros((batch - real, *chunk.shape[1:]), dtype=np.float32)
                chunk = np.concatenate([chunk, pad])
            logits = session.run(np.ascontiguousarray(chunk))
            predicted = np.asarray(logits).reshape(len(chunk), -1)[:real].argmax(axis=1)
            correct += int((predicted == data.labels[start:start + real]).sum())
        return {"accuracy": 100.0 * correct / len(data.labels)}
