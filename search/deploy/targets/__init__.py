"""Deploy targets: one module per runtime (see base.py for how to add one)."""
from __future__ import annotations

from search.deploy.targets.base import (SUFFIXES, TARGETS, Session, Source, Target, UnsupportedError, check_supported,
                                        source_onnx, target_for, target_named)

__all__ = ["SUFFIXES", "TARGETS", "Session", "Source", "Target", "UnsupportedError", "check_supported", "source_onnx",
           "target_for", "target_named"]
