"""A study's space and first plans once the profile is known: measured (or read back), narrowed, seeded."""
from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from search.profiling.narrow import narrowed
from search.profiling.profile import FILE, load_or_measure, stored_profile
from search.inspect.profile_plot import write_profile_plots
from search.profiling.seeds import SeedLadder, enqueue_seeds

if TYPE_CHECKING:
    import optuna

    from search.runner import Job
    from search.inspect.tracking import Tracker
    from search.trials.trial import SearchContext


def profiled(study: optuna.Study, ctx: SearchContext, job: Job, *, tracker: Tracker | None = None,
             parent: str | None = None) -> tuple[SearchContext, SeedLadder | None]:
    """``ctx`` with the space the trials sample from, and the callback that queues larger seeds.

    The profile's files go to the study's MLflow run. Call it after the reference plans are queued, so the
    seeds come after them.
    """
    settings = job.profile
    if settings is None or not settings.enabled:
        return ctx, None
    fresh = stored_profile(study) is None
    profile = load_or_measure(study, ctx, settings)
    space = narrowed(ctx.space, profile, study, quant=job.quant, objectives=job.objectives)
    enqueue_seeds(study, space, profile, settings, budget=job.search.n_trials)
    plots = ctx.run_dir / "plots"
    if fresh or not (plots / "profile.png").is_file():
        files = [ctx.run_dir / FILE, *write_profile_plots(profile, plots)]
        if tracker and parent:
            for path in files:  # beside the front plots, so profile.html finds their plotly.min.js
                tracker.log_artifact(parent, str(path))
    return replace(ctx, space=space), SeedLadder(space, profile, settings, budget=job.search.n_trials)
