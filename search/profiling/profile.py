"""The sensitivity profile: what each knob costs and buys, measured once per study before any trial.

Per prune group: the accuracy lost by pruning that group alone (no fine-tuning) and the share
of parameters and MACs it removes. Per layer: the error int8 adds there, and its share of the
baseline's latency and size. Seeds (:mod:`search.profiling.seeds`) and the latency-aware precision
choices (:mod:`search.profiling.narrow`) are derived from it; the report shows it.

The profile is stored as the study's ``profile`` user attribute (and copied to
``<run_dir>/profile.json``); a resume, or another worker, reads it back and measures nothing.
"""
from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

if TYPE_CHECKING:
    import optuna

    from search.trials.trial import SearchContext

log = logging.getLogger(__name__)
ATTR = "profile"
FILE = "profile.json"


@dataclass(frozen=True)
class ProfileSettings:
    """How the profile is measured (``search.profile``) and how seeds are drawn from it."""

    enabled: bool = True
    samples: int = 1000           # validation samples the prune costs are measured on
    calib_samples: int = 32       # calibration samples whose activations int8 errors compare
    latency_runs: int = 30        # profiled runs of the fp32 baseline, after 5 warm-up runs
    budgets: tuple[float, ...] = (0.25, 0.4, 0.55)  # seed plans: share of parameters pruned away
    mac_budget: float | None = 0.3  # one more seed: share of MACs pruned away (null: none)
    fp32_margin_db: float = 10.0  # a layer this far below the median int8 SQNR is a candidate for fp32 in seeds
    fp32_max_layers: int = 3      # at most this many candidates
    fp32_min_gain: float = 0.2    # a candidate stays fp32 only if that wins back this many points (measured)
    ladder_step: float | None = 0.15  # a seed with room to spare queues one this much larger (null: never)
    ladder_headroom: float = 0.25     # ... room: at least this much under every constraint's limit

    def __post_init__(self) -> None:
        for key in ("samples", "calib_samples", "latency_runs"):
            value = getattr(self, key)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"search.profile.{key}={value!r} must be an integer >= 1")
        object.__setattr__(self, "budgets", tuple(float(b) for b in self.budgets))
        named = [("budgets", b) for b in self.budgets]
        for key, budget in named + ([] if self.mac_budget is None else [("mac_budget", self.mac_budget)]):
            if not 0 < budget < 1:
                raise ValueError(f"search.profile.{key}: {budget!r} is outside (0, 1); a budget is the share of "
                                 f"{'MACs' if key == 'mac_budget' else 'parameters'} the seed plan prunes away")
        if self.ladder_step is not None and not 0 < self.ladder_step < 1:
            raise ValueError(f"search.profile.ladder_step={self.ladder_step!r} is outside (0, 1); it is the share "
                             "of parameters or MACs a seed with room to spare adds (null: no larger seeds)")
        if not self.ladder_headroom >= 0:
            raise ValueError(f"search.profile.ladder_headroom={self.ladder_headroom!r} must be >= 0 (how far under "
                             "every constraint's limit a seed must end for a larger one to be queued)")
        if self.fp32_max_layers < 0:
            raise ValueError(f"search.profile.fp32_max_layers={self.fp32_max_layers!r} must be >= 0")
        if not self.fp32_min_gain >= 0:
            raise ValueError(f"search.profile.fp32_min_gain={self.fp32_min_gain!r} must be >= 0 "
                             "(accuracy points a candidate layer must win back to stay fp32 in seeds)")


@dataclass(frozen=True)
class PrunePoint:
    """One group pruned alone at ``ratio``: points of accuracy lost, shares of the model removed."""

    ratio: float
    drop: float
    params_share: float
    macs_share: float


@dataclass(frozen=True)
class GroupProfile:
    name: str                            # the group's root layer: the knob is ``prune.<name>``
    points: tuple[PrunePoint, ...]       # by ratio, ascending

    def at(self, ratio: float) -> PrunePoint | None:
        return next((p for p in self.points if abs(p.ratio - ratio) < 1e-9), None)


@dataclass(frozen=True)
class LayerProfile:
    name: str
    int8_sqnr_db: float      # the layer's output in the all-int8 model vs fp32 (errors of earlier layers included)
    int8_added_db: float     # the error int8 adds at this layer alone, as an SQNR (higher is better)
    latency_share: float     # of the fp32 baseline's node time on ONNX Runtime, 1 thread
    size_share: float        # of the baseline's fp32 weight bytes
    # accuracy points the all-int8 model wins back with this layer alone fp32; measured for the int8-SQNR
    # outliers only (None elsewhere, and in profiles stored before it existed)
    fp32_gain: float | None = None


@dataclass(frozen=True)
class Profile:
    groups: tuple[GroupProfile, ...]
    layers: tuple[LayerProfile, ...]
    baseline_accuracy: float             # on the profile's validation subset, torch, eval mode
    samples: int
    seed: int
    seconds: Mapping[str, float] = field(default_factory=dict)  # per part, and ``total``
    latency_unassigned: float = 0.0      # share of node time no layer owns (layout reorders, a leading op)

    @property
    def ratios(self) -> tuple[float, ...]:
        return tuple(sorted({p.ratio for g in self.groups for p in g.points}))

    def layer(self, name: str) -> LayerProfile | None:
        return next((layer for layer in self.layers if layer.name == name), None)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Profile:
        groups = tuple(GroupProfile(g["name"], tuple(PrunePoint(**p) for p in g["points"])) for g in data["groups"])
        layers = tuple(LayerProfile(**layer) for layer in data["layers"])
        return cls(groups=groups, layers=layers, baseline_accuracy=float(data["baseline_accuracy"]),
                   samples=int(data["samples"]), seed=int(data["seed"]), seconds=dict(data.get("seconds", {})),
                   latency_unassigned=float(data.get("latency_unassigned", 0.0)))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, allow_nan=True)

    @classmethod
    def from_json(cls, text: str) -> Profile:
        return cls.from_dict(json.loads(text))


def stored_profile(study: optuna.Study) -> Profile | None:
    data = study.user_attrs.get(ATTR)
    return None if data is None else Profile.from_dict(data)


def load_or_measure(study: optuna.Study, ctx: SearchContext, settings: ProfileSettings) -> Profile:
    """The study's profile: read back when it holds one, else measured now and stored on it."""
    profile = stored_profile(study)
    if profile is None:
        from search.profiling.measure import measure_profile

        log.info("profiling %d prune groups and %d layers (once per study)", len(ctx.space.prune_knobs),
                 len(ctx.space.quant_knobs))
        profile = measure_profile(ctx, settings)
        study.set_user_attr(ATTR, profile.to_dict())
        log.info("profile measured in %.1f s", profile.seconds.get("total", 0.0))
    path, text = Path(ctx.run_dir) / FILE, profile.to_json()
    if not path.is_file() or path.read_text() != text:  # the study is the record; the file is its copy
        path.write_text(text)
    return profile
