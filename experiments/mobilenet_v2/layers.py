"""Per-layer view of MobileNetV2 plans: which kind of layer each knob is, and where int8 pays."""
from __future__ import annotations

import re
from collections import Counter, defaultdict
from pathlib import Path
from typing import Mapping, Sequence

from torch import nn

from evaluators.latency import interleaved
from spaces.quantization import quantize

KINDS = ("stem", "expand 1x1", "depthwise 3x3", "project 1x1", "last 1x1", "classifier")


def layer_kinds(model: nn.Module) -> dict[str, str]:
    """``{layer name: kind}`` for every Conv/Linear of a torchvision-layout MobileNetV2."""
    kinds: dict[str, str] = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            kinds[name] = "classifier"
        elif isinstance(module, nn.Conv2d):
            if module.groups > 1:
                kinds[name] = "depthwise 3x3"
            elif name == "features.0.0":
                kinds[name] = "stem"
            elif name.endswith(".conv.0.0"):
                kinds[name] = "expand 1x1"
            elif re.search(r"\.conv\.\d$", name):
                kinds[name] = "project 1x1"
            else:
                kinds[name] = "last 1x1"
    return kinds


def precision_mix(plans: Sequence[Mapping[str, str]], kinds: Mapping[str, str]) -> dict[str, Counter]:
    """For each layer kind, how many layers (summed over ``plans``) got each precision."""
    mix: dict[str, Counter] = defaultdict(Counter)
    for quant in plans:
        for layer, precision in quant.items():
            mix[kinds.get(layer, "other")][precision] += 1
    return mix


def mix_table(title: str, mix: Mapping[str, Counter], precisions: Sequence[str]) -> str:
    head = f"| {title} | " + " | ".join(precisions) + " |\n|---|" + "---|" * len(precisions) + "\n"
    lines = []
    for kind in KINDS:
        counts = mix.get(kind, Counter())
        total = sum(counts.values()) or 1
        lines.append(f"| {kind} | " + " | ".join(f"{100 * counts[p] / total:.0f}%" for p in precisions) + " |")
    return head + "\n".join(lines)


def kind_probe(fp32_path: Path, out_dir: Path, kinds: Mapping[str, str], data, *, runs: int,
               warmup: int) -> list[dict]:
    """Time the unpruned baseline with int8 on all layers, and with one kind of layer left fp32.

    All variants are timed interleaved with the fp32 file in one process, so the ratios hold.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    variants: dict[str, dict[str, str]] = {"all fp32": {k: "fp32" for k in kinds},
                                           "all int8": {k: "int8" for k in kinds}}
    for kind in KINDS:
        if kind in kinds.values():
            variants[f"int8, {kind} fp32"] = {k: "fp32" if v == kind else "int8" for k, v in kinds.items()}
    variants["int8, last 1x1 + classifier int4"] = {
        k: "int4" if v in ("last 1x1", "classifier") else "int8" for k, v in kinds.items()}
    paths = []
    for i, (label, precisions) in enumerate(variants.items()):
        if label == "all fp32":
            paths.append(fp32_path)
            continue
        paths.append(quantize(fp32_path, out_dir / f"variant{i}.onnx", precisions, data.calib))
    timed = interleaved(paths, data.val, warmup=warmup, runs=runs, threads=1)
    base = timed[0]["latency_ms"]
    return [{"variant": label, "latency_ms": t["latency_ms"], "latency_cv": t["latency_cv"],
             "speedup": base / t["latency_ms"], "size_bytes": Path(p).stat().st_size}
            for (label, _), t, p in zip(variants.items(), timed, paths)]
