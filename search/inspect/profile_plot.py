"""The profile as a bar chart: what pruning each group alone costs, and where time and bytes go per layer."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import plotly.graph_objects as go
from matplotlib.figure import Figure
from plotly.subplots import make_subplots

from search.inspect.plots import DPI, _write_html

if TYPE_CHECKING:
    from search.profiling.profile import Profile

TITLES = ("Accuracy lost by pruning one group alone, no fine-tuning (points)",
          "Share of the fp32 baseline per layer (%)")


def _drops(profile: Profile) -> dict[float, list[float]]:
    return {ratio: [getattr(g.at(ratio), "drop", np.nan) for g in profile.groups] for ratio in profile.ratios}


def profile_png(profile: Profile, path: Path) -> Path:
    groups, layers = [g.name for g in profile.groups], [layer.name for layer in profile.layers]
    fig = Figure(figsize=(max(8.0, 0.32 * max(len(groups), len(layers)) + 3), 8.0), layout="constrained")
    top, bottom = fig.subplots(2, 1)
    width = 0.8 / max(len(profile.ratios), 1)
    for i, (ratio, drops) in enumerate(_drops(profile).items()):
        top.bar(np.arange(len(groups)) + i * width, drops, width, label=f"ratio {ratio:g}")
    top.set_xticks(np.arange(len(groups)) + width * (len(profile.ratios) - 1) / 2, groups, rotation=60, ha="right",
                   fontsize=7)
    top.set(title=TITLES[0], ylabel="points")
    top.legend(fontsize=8)
    x = np.arange(len(layers))
    bottom.bar(x - 0.2, [100 * layer.latency_share for layer in profile.layers], 0.4, label="latency",
               color="tab:red")
    bottom.bar(x + 0.2, [100 * layer.size_share for layer in profile.layers], 0.4, label="weight bytes",
               color="tab:blue")
    bottom.set_xticks(x, layers, rotation=60, ha="right", fontsize=7)
    bottom.set(title=TITLES[1], ylabel="%")
    bottom.legend(fontsize=8)
    for ax in (top, bottom):
        ax.grid(axis="y", alpha=0.3)
    fig.savefig(path, dpi=DPI)
    return path


def profile_html(profile: Profile, path: Path) -> Path:
    groups, layers = [g.name for g in profile.groups], [layer.name for layer in profile.layers]
    fig = make_subplots(rows=2, cols=1, subplot_titles=TITLES, vertical_spacing=0.25)
    for ratio, drops in _drops(profile).items():
        fig.add_trace(go.Bar(x=groups, y=drops, name=f"ratio {ratio:g}"), row=1, col=1)
    for label, values, colour in (("latency", [layer.latency_share for layer in profile.layers], "crimson"),
                                  ("weight bytes", [layer.size_share for layer in profile.layers], "steelblue")):
        fig.add_trace(go.Bar(x=layers, y=[100 * v for v in values], name=label, marker_color=colour), row=2, col=1)
    fig.update_layout(title="Sensitivity profile", barmode="group", template="plotly_white", height=760)
    return _write_html(fig, path)


def write_profile_plots(profile: Profile, out_dir: Path) -> list[Path]:
    (out := Path(out_dir)).mkdir(parents=True, exist_ok=True)
    return [profile_png(profile, out / "profile.png"), profile_html(profile, out / "profile.html")]
