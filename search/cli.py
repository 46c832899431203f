"""``autosqueeze <command> [hydra overrides]``: the only code that sees Hydra's DictConfig."""
from __future__ import annotations

import itertools
import logging
import os
import sys
import warnings
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

from hydra import compose, initialize_config_module
from hydra.errors import HydraException, InstantiationException
from hydra.utils import instantiate
import optuna
from omegaconf import DictConfig, OmegaConf
from optuna.exceptions import ExperimentalWarning
from omegaconf.errors import OmegaConfBaseException

from evaluators.base import Constraint, Objective
from search.baseline import baseline_key
from search.confirm import ConfirmSettings
from search.trials.early_stop import EarlyStop
from search.trials.prescreen import Prescreen
from search.trials.finetune import FinetuneSettings
from search.trials.onnx_export import ExportError
from search.profiling.profile import ProfileSettings
from search.records.recorded_config import (ATTR, conflicts, effective, flatten, is_locating, masked_keys,
                                            override_key, package_manifest, record, refusal)
from search.records.secrets import redact
from search.records.storage import HeartbeatSettings
from search.study import LOCAL_WORKER_ENV, SearchSettings
from search.inspect.tracking import TrackingSettings

if TYPE_CHECKING:
    from search.gate import Gate
    from search.trials.trial import TrialResult

USAGE = """usage: autosqueeze COMMAND [KEY=VALUE ...]
       autosqueeze verify PACKAGE [KEY=VALUE ...]

commands:
  search   run (or resume) a compression search and print its Pareto front
  export   write a deploy package (folder + zip) for one trial of a finished study, register it in MLflow
  verify   re-check a package (zip or folder): file hashes, accuracy, latency, predict.py; exit 1 on a FAIL
  sync     log to MLflow the trials a search could not log (server down, tracking off)
  report   write an HTML report of a study (front, plots, per-layer sensitivity, export commands)

Overrides use Hydra syntax, e.g.  autosqueeze search search.n_trials=40 space.prune.ratios=[0,0.25,0.5]
Show the composed config with:      autosqueeze search --cfg"""
EXIT_USAGE = 2
log = logging.getLogger("autosqueeze")


class UsageError(Exception):
    """Bad input from the user: printed as one line, exit code 2."""


def load_config(overrides: list[str]) -> DictConfig:
    try:
        with initialize_config_module(config_module="conf", version_base="1.3"):
            cfg = compose(config_name="config", overrides=overrides)
        OmegaConf.resolve(cfg)
    except (HydraException, OmegaConfBaseException) as exc:
        lines = str(exc).splitlines()
        # after "Could not find 'group/option'" Hydra lists the group's options, then its search path
        listed = next((i for i, line in enumerate(lines) if line.startswith("Available options")), len(lines))
        options = [line.strip() for line in itertools.takewhile(lambda l: l.startswith("\t"), lines[listed + 1:])]
        raise UsageError(f"config: {lines[0]}" + (f"; allowed: {', '.join(options)}" if options else "")) from exc
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise UsageError(f"config: {', '.join(missing)} must be set (e.g. {missing[0]}=yourpkg.module.factory)")
    return cfg


def plain(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node


def _tuple(value: Any) -> tuple | None:
    return None if value is None else tuple(value)


def kind_specs(cfg: DictConfig) -> tuple[tuple[str, ...], dict[str, Any]]:
    """``space.kinds`` and each listed kind's settings, built by the kind from its ``space.<kind>`` section."""
    from spaces.kinds import DEFAULT_KINDS, kind_named

    space = plain(cfg.space)
    names = tuple(space.get("kinds") or DEFAULT_KINDS)
    specs = {}
    for name in dict.fromkeys((*names, *DEFAULT_KINDS)):  # prune and quant settings are read even when unused
        specs[name] = kind_named(name, where="space.kinds").spec(space.get(name) or {})
    return names, specs


def search_settings(cfg: DictConfig) -> SearchSettings:
    s = plain(cfg.search)
    for nested in ("finetune", "heartbeat", "confirm", "profile", "early_stop", "prescreen"):
        s.pop(nested, None)
    return SearchSettings(**s)


def data_splits(cfg: DictConfig):
    from zoo.data import coerce_splits

    return coerce_splits(instantiate(cfg.data, _convert_="all"), seed=cfg.seed)


def objectives_of(cfg: DictConfig) -> list[Objective]:
    return [Objective(**o) for o in plain(cfg.evaluator.objectives)]


def study_of(cfg: DictConfig):
    """The configured study, opened without loading any model or data."""
    from search.records.storage import existing_storage, storage_url
    from search.study import load_study

    url = storage_url(cfg.storage, Path(cfg.paths.run_dir))
    return load_study(cfg.search.study_name, existing_storage(url, cfg.search.study_name))


def study_config(cfg: DictConfig, overrides: list[str], *, must_exist: bool = True) -> DictConfig:
    """The config the study recorded when it was searched, with only the command line's free keys applied.

    A new study, or one searched before studies recorded their config, keeps ``cfg``.
    """
    recorded = study_of(cfg).user_attrs.get(ATTR) if must_exist else _recorded_if_any(cfg)
    if not recorded:
        return cfg
    return with_record(recorded, cfg, overrides, subject=f"study {cfg.search.study_name!r} was searched")


def _recorded_if_any(cfg: DictConfig) -> dict | None:
    """The recorded config of the study ``search`` would resume; None for a study not there yet."""
    from search.records.storage import make_storage, storage_url

    url = storage_url(cfg.storage, Path(cfg.paths.run_dir))
    if url.startswith("sqlite:///") and not Path(url[len("sqlite:///"):]).is_file():
        return None  # opening it would create the file before the config is checked
    storage = make_storage(url)
    try:
        study_id = storage.get_study_id_from_name(cfg.search.study_name)
    except KeyError:
        return None
    return storage.get_study_user_attrs(study_id).get(ATTR)


def with_record(recorded: dict, cfg: DictConfig, overrides: list[str], *, subject: str,
                way_out: str = "or give a new search.study_name to start a fresh study") -> DictConfig:
    """``recorded`` plus what the command line may change; a changed number is refused, naming each key."""
    given = plain(cfg)
    # What the command line changed is told apart from defaults that moved since the record was made.
    default = plain(load_config([o for o in overrides if is_locating(o)]))
    named = tuple(override_key(o) for o in overrides)
    found = conflicts(recorded, given, default, named)
    if found:
        raise UsageError(refusal(subject, found, way_out=way_out))
    merged = effective(recorded, given, default, named)
    masked = masked_keys(merged)
    if masked:
        raise UsageError(f"{masked[0]}={flatten(merged)[masked[0]]!r}: the record keeps no password; "
                         f"give {masked[0]}= with it on the command line")
    return OmegaConf.create(merged)


def settings_params(cfg: DictConfig) -> dict[str, Any]:
    """The search settings as flat MLflow params (``settings.finetune.steps`` ...)."""
    params = {f"settings.{k}": v for k, v in _flat(plain(cfg.search)).items()}
    params.update({f"settings.space.{k}": v for k, v in _flat(plain(cfg.space)).items()})
    return params


def decided(cfg: DictConfig, quant) -> DictConfig:
    """``cfg`` with ``space.quant.reduce_range: auto`` replaced by what this CPU decided.

    The study records this config, so its workers, resumes and exports write the int8 weights its
    first trials wrote, on whatever CPU they run; its MLflow params show the value in effect.
    """
    out = cfg.copy()
    OmegaConf.update(out, "space.quant.reduce_range", quant.settings.reduce_range, force_add=True)
    return out


def build_job(cfg: DictConfig):
    """Every object the search needs, built and validated before any training starts."""
    from search.runner import Job

    kinds, specs = kind_specs(cfg)
    prune, quant, search = specs.pop("prune"), specs.pop("quant"), search_settings(cfg)
    cfg = decided(cfg, quant)
    evaluator_cfg = cfg.evaluator
    evaluators = [instantiate(node) for node in evaluator_cfg.evaluators.values()]
    objectives = objectives_of(cfg)
    constraints = [Constraint(**c) for c in plain(evaluator_cfg.constraints)]
    tracking = None if cfg.tracking.uri is None else TrackingSettings(**plain(cfg.tracking))
    make_model: Callable = partial(instantiate, cfg.model.factory)
    train = plain(cfg.model.get("train"))
    gate = gate_of(cfg)  # a bad requirement is reported before the data is loaded
    data = data_splits(cfg)
    job = Job(make_model=make_model, data=data, evaluators=evaluators, objectives=objectives,
              constraints=constraints, search=search, run_dir=Path(cfg.paths.run_dir),
              cache_dir=Path(cfg.paths.cache_dir),
              model_key=baseline_key(plain(cfg.model), plain(cfg.data)),
              checkpoint=cfg.model.get("checkpoint"), trained=bool(cfg.model.get("trained") or False),
              baseline_training=None if train is None else FinetuneSettings(**train),
              head_steps=int(cfg.model.get("head_steps", 0) or 0),
              finetune=FinetuneSettings(**plain(cfg.search.finetune)), prune=prune, quant=quant,
              kinds=kinds, specs=specs,
              tracking=tracking, storage=cfg.storage, heartbeat=HeartbeatSettings(**plain(cfg.search.heartbeat)),
              confirm=ConfirmSettings(**plain(cfg.search.confirm)),
              early_stop=EarlyStop(**plain(cfg.search.get("early_stop") or {})),
              prescreen=Prescreen(**plain(cfg.search.get("prescreen") or {})),
              profile=ProfileSettings(**plain(cfg.search.get("profile") or {})),
              settings_params=settings_params(cfg), config=record(plain(cfg)),
              target=instantiate(cfg.target), gate=gate)
    job.check()
    return job


def gate_of(cfg: DictConfig) -> Gate | None:
    """The CI gate ``gate.require`` asks for, or None."""
    from search.gate import Gate

    require = plain(OmegaConf.select(cfg, "gate.require"))
    return None if require is None else Gate(require=require)


def _flat(tree: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def cmd_search(cfg: DictConfig, overrides: list[str]) -> int:
    from search.inspect import pareto
    from search.inspect.next_steps import next_steps, size_metric
    from search.runner import run_search

    job = build_job(study_config(cfg, overrides, must_exist=False))
    # Local workers are plain `autosqueeze search` runs on the same study, as on other machines.
    worker = [sys.executable, "-m", "search.cli", "search", *overrides, "search.workers=1"]
    outcome = run_search(job, worker_command=worker if job.search.workers > 1 else None)
    if os.environ.get(LOCAL_WORKER_ENV):
        return outcome.exit_code  # the process that started the workers prints the front
    print(f"\nPareto front of study {job.search.study_name!r} ({len(outcome.study.trials)} trials, "
          f"hypervolume {outcome.hypervolume:.4f}):")
    print(pareto.table(outcome.front, outcome.baseline, outcome.left))
    print("\nfiles: " + ", ".join(str(p) for p in outcome.files))
    print("\n" + next_steps(outcome.front, located=located(cfg, overrides), constraints=job.constraints,
                            tracking_uri=job.tracking.uri if job.tracking else None,
                            size=size_metric(job.objectives)))
    if job.gate is None or outcome.exit_code != 0:
        return outcome.exit_code
    return report_gate(job.gate, outcome.front)


def report_gate(gate: Gate, front: Sequence[TrialResult]) -> int:
    """The gate's JSON line (last on stdout) and, when it fails, one line on stderr and exit 3."""
    from search.gate import EXIT_NOT_MET, verdict_lines

    verdict = gate.verdict(front)
    machine, person = verdict_lines(verdict)
    print(person, file=sys.stdout if verdict["gate"] == "met" else sys.stderr)
    print(machine)
    return 0 if verdict["gate"] == "met" else EXIT_NOT_MET


def located(cfg: DictConfig, overrides: list[str]) -> list[str]:
    """The overrides that find this study again (``report``, ``export``), passwords masked.

    The command line's locating overrides, plus any locating value an experiment file set, so the
    printed commands compose to the same study folder and storage without repeating ``experiment=``.
    """
    keep = [o for o in overrides if is_locating(o) and override_key(o) != "search.study_name"]
    out = [f"search.study_name={cfg.search.study_name}", *keep]
    bare = load_config(out)
    for key in ("storage", "paths.root", "paths.run_dir", "paths.cache_dir"):
        value = OmegaConf.select(cfg, key)
        if OmegaConf.select(bare, key) != value:
            out.append(f"{key}={'null' if value is None else value}")
    return [redact(o) for o in out]


def cmd_export(cfg: DictConfig, overrides: list[str]) -> int:
    from search.deploy.export import ExportSettings, export_command

    cfg = study_config(cfg, overrides)
    settings = plain(cfg.export)
    settings.pop("verify", None)  # the verify command's knobs
    return export_command(build_job(cfg), ExportSettings(**settings))


def cmd_verify(cfg: DictConfig, overrides: list[str], *, package: Path) -> int:
    """``autosqueeze verify PACKAGE``: one PASS/FAIL line per check; loads the data group, never the model."""
    from search.deploy.verify import VerifySettings, verify_package

    if not package.exists():
        raise UsageError(f"verify: no package at {package} (give the .zip or the folder `autosqueeze export` wrote)")
    recorded = package_manifest(package).get(ATTR)
    if isinstance(recorded, dict) and recorded:  # packages from before manifests recorded the data config lack it
        cfg = with_record(recorded, cfg, overrides, subject=f"package {package} was exported", way_out="")
    settings = VerifySettings(**plain(cfg.export.verify))
    evaluators = [instantiate(node) for node in cfg.evaluator.evaluators.values()]
    accuracy = next((e for e in evaluators if "accuracy" in e.metrics), None)
    splits = data_splits(cfg)
    checks = verify_package(package, val=splits.val, test=splits.test, accuracy=accuracy, settings=settings)
    for check in checks:
        print(check.line())
    failed = [c.name for c in checks if not c.ok]
    print(f"verify: {'FAILED (' + ', '.join(failed) + ')' if failed else 'all checks passed'} for {package}")
    return 1 if failed else 0


def cmd_sync(cfg: DictConfig, overrides: list[str]) -> int:
    from search.inspect.sync import sync
    from search.inspect.tracking import Tracker

    cfg = study_config(cfg, overrides)
    if cfg.tracking.uri is None:
        raise UsageError("tracking.uri is null: there is no MLflow store to sync to")
    replayed = sync(study_of(cfg), Tracker(TrackingSettings(**plain(cfg.tracking))), objectives_of(cfg),
                    params=settings_params(cfg))
    print(f"synced {replayed} trials of study {cfg.search.study_name!r} to {redact(cfg.tracking.uri)}")
    return 0


def cmd_report(cfg: DictConfig, overrides: list[str]) -> int:
    """``<run_dir>/report.html`` plus ``<run_dir>/plots/`` for an existing study; loads no data and no model.

    Prints the report's path, and on a desktop opens it in the web browser as well.
    """
    import shlex

    from search.inspect.report import write_report
    from search.study import check_objectives

    cfg = study_config(cfg, overrides)
    run_dir, name, objectives = Path(cfg.paths.run_dir), cfg.search.study_name, objectives_of(cfg)
    study = study_of(cfg)
    check_objectives(study, objectives)
    # The export command repeats the overrides that locate the study (and model/data ones), URLs redacted.
    kept = [o for o in overrides if not o.startswith(("storage=", "search.study_name=", "export."))]
    where = [f"storage={redact(cfg.storage)}"] if cfg.storage else []
    path = write_report(study, objectives, run_dir / "report.html", export_hint=lambda n: shlex.join(
        ["autosqueeze", "export", f"search.study_name={name}", f"export.trial={n}", *where, *kept]))
    print(path)
    if on_a_desktop():
        import webbrowser

        webbrowser.open(path.resolve().as_uri())
    return 0


def on_a_desktop() -> bool:
    """A person at a screen: a terminal, and a display to open a browser on (never in CI, logs or pipes)."""
    display = sys.platform in ("darwin", "win32") or any(os.environ.get(v) for v in ("DISPLAY", "WAYLAND_DISPLAY"))
    return display and sys.stdout.isatty()


COMMANDS: dict[str, Callable[..., int]] = {
    "search": cmd_search, "export": cmd_export, "sync": cmd_sync, "report": cmd_report, "verify": cmd_verify}
POSITIONAL = {"verify": "package"}  # commands whose first argument is a path, not a Hydra override


def configure_logging(cfg: DictConfig) -> None:
    """Our progress at INFO (WARNING when quiet); other libraries only when something is wrong."""
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    for ours in ("autosqueeze", "search", "spaces", "evaluators", "zoo"):
        logging.getLogger(ours).setLevel(logging.WARNING if cfg.quiet else logging.INFO)
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # our one-line progress replaces its dumps
    warnings.filterwarnings("ignore", category=ExperimentalWarning)  # heartbeat: stable in practice
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)


def _reason(exc: BaseException) -> str:
    """One line: the user's own error, not Hydra's wrapper around it."""
    if isinstance(exc, InstantiationException) and exc.__cause__ is not None:
        target = str(exc).split("'")[1] if str(exc).count("'") >= 2 else "the factory"
        cause = exc.__cause__
        if isinstance(cause, ImportError | AttributeError):
            return f"cannot import {target!r}: {str(cause).splitlines()[0]}"
        exc = cause
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else 'no details'}"


def _handler(command: str, overrides: list[str]) -> Callable[..., int] | None:
    """The command's function; a positional path (``verify PACKAGE``) is taken off ``overrides`` and bound."""
    handler = COMMANDS[command]
    if command not in POSITIONAL:
        return handler
    name = POSITIONAL[command]
    if not overrides or "=" in overrides[0] or overrides[0].startswith("-"):
        print(f"autosqueeze: {command} needs a {name} path first: autosqueeze {command} {name.upper()} "
              "[KEY=VALUE ...]", file=sys.stderr)
        return None
    return partial(handler, **{name: Path(overrides.pop(0))})


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0 if args else EXIT_USAGE
    command, overrides = args[0], args[1:]
    if command not in COMMANDS:
        print(f"autosqueeze: unknown command {command!r}; allowed: {', '.join(COMMANDS)}", file=sys.stderr)
        return EXIT_USAGE
    handler = _handler(command, overrides)
    if handler is None:
        return EXIT_USAGE
    try:
        cfg = load_config([o for o in overrides if o != "--cfg"])
        if "--cfg" in overrides:
            print(OmegaConf.to_yaml(cfg))
            return 0
        configure_logging(cfg)
        return handler(cfg, [o for o in overrides if o != "--cfg"])
    except UsageError as exc:
        print(f"autosqueeze: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (ValueError, TypeError, FileNotFoundError, HydraException, ExportError) as exc:
        print(f"autosqueeze: {_reason(exc)}", file=sys.stderr)
        return EXIT_USAGE
    except ConnectionError as exc:
        print(f"autosqueeze: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
