"""``quant``: a precision per Conv/Gemm layer, realised as ONNX Runtime QDQ (mechanics in spaces/quantization.py)."""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

from spaces.base import PlanError, check_precision
from spaces.kinds.base import ApplyEnv, KindBase, ModelInfo, check_keys, layer_knobs
from spaces.quantization import Precision, QuantSettings, quantize

SETTINGS = ("activation_type", "per_channel", "calibration", "calib_batch_size", "percentile", "reduce_range")


@dataclass(frozen=True)
class QuantSpec:
    """How precision knobs are made: the precisions each may take and the layers kept fp32."""

    precisions: tuple[str, ...] = ("fp32", "int8", "int16", "int4")
    exclude: tuple[str, ...] = ()
    settings: QuantSettings = field(default_factory=QuantSettings)
    # Weight-only precisions (int4, int16, fp16) run as DequantizeLinear + fp32 compute on CPU: with
    # latency as an objective they are offered only on layers holding together at most this latency share.
    latency_aware: bool = True
    int4_max_latency_share: float = 0.02

    def __post_init__(self) -> None:
        Precision("space.quant.precisions", self.precisions)
        if not 0.0 <= self.int4_max_latency_share <= 1.0:
            raise PlanError(f"space.quant.int4_max_latency_share={self.int4_max_latency_share!r} is outside [0, 1]; "
                            "it is the share of the baseline's latency that int4 layers may hold together")


class QuantKind(KindBase):
    name = "quant"
    stage = "graph"
    rank = 0
    neutral = "fp32"

    def spec(self, section: Mapping[str, Any]) -> QuantSpec:
        q = dict(section)
        check_keys(self.name, q, {f.name for f in fields(QuantSpec)} - {"settings"} | set(SETTINGS))
        settings = QuantSettings(**{k: q.pop(k) for k in SETTINGS if k in q})
        return QuantSpec(precisions=tuple(q.pop("precisions", QuantSpec.precisions)),
                         exclude=tuple(q.pop("exclude", ())), settings=settings, **q)

    def check(self, key: str, value: Any) -> str:
        return check_precision(key, value)

    def knobs(self, info: ModelInfo, spec: QuantSpec) -> tuple[Precision, ...]:
        return layer_knobs(self.name, info, spec.exclude, lambda name: Precision(name, spec.precisions))

    def apply_graph(self, source: Path, target: Path, values: Mapping[str, str], spec: QuantSpec,
                    env: ApplyEnv) -> Path:
        return quantize(source, target, values, env.calib, settings=spec.settings)

    def describe(self, value: str) -> str:
        return value


KIND = QuantKind()
