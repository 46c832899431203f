"""What a search shows while it runs: a live display on a terminal, one line per finished trial in a log,
and nothing but warnings and the front with ``quiet=true``; MLflow's per-run URL lines never."""
from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import time
from datetime import datetime, timedelta
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from search.progress import Progress, estimate
from servers import free_port, serving
from test_faults import TINY
from test_workers import env

WAIT_S = 300
WARNING = "a warning while the display runs"
# A search whose fine-tunes log a warning, so the test sees where warnings land.
CHILD = f"""
import logging, sys
import search.trials.trial
from search.cli import main
finetune = search.trials.trial.finetune
def warned(*args, **kwargs):
    logging.getLogger("autosqueeze").warning({WARNING!r})
    return finetune(*args, **kwargs)
search.trials.trial.finetune = warned
sys.exit(main(sys.argv[1:]))
"""
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07")
FINISHED = re.compile(r"trial (\d+) (done in|failed|stopped early)")
STAGES = ("prune", "prescreen", "finetune", "export", "quantize", "evaluate")


def search_command(tmp: Path, cache: Path, study: str, *overrides: str) -> list[str]:
    """3 trials of the tiny CNN (the reference plans), 10 fine-tune steps shown every 5."""
    return [sys.executable, "-c", CHILD, "search", *TINY, f"paths.root={tmp / 'outputs'}", f"paths.cache_dir={cache}",
            f"search.study_name={study}", "search.n_trials=3", "search.finetune.steps=10",
            "search.finetune.log_every=5", "search.profile.enabled=false", "search.early_stop.enabled=false",
            "search.confirm.runs=20", *overrides]


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    """One baseline for the module's searches (trained by the first)."""
    return tmp_path_factory.mktemp("progress-cache")


def finished(tmp: Path, study: str) -> list[optuna.trial.FrozenTrial]:
    storage = f"sqlite:///{tmp / 'outputs' / study / 'study.db'}"
    states = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
    return optuna.load_study(study_name=study, storage=storage).get_trials(deepcopy=False, states=states)


def on_a_terminal(command: list[str], *, cwd: Path) -> tuple[int, str]:
    """Run ``command`` with stdin, stdout and stderr on a 160-column pseudo-terminal; its exit code and output."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 160, 0, 0))
    terminal = {k: v for k, v in env().items() if k not in ("TTY_COMPATIBLE", "TTY_INTERACTIVE", "FORCE_COLOR")}
    process = subprocess.Popen(command, cwd=cwd, stdin=slave, stdout=slave, stderr=slave, start_new_session=True,
                               env={**terminal, "TERM": "xterm-256color"})
    os.close(slave)
    chunks: list[bytes] = []
    deadline = time.monotonic() + WAIT_S
    try:
        while time.monotonic() < deadline:
            if select.select([master], [], [], 1.0)[0]:
                try:
                    data = os.read(master, 65536)
                except OSError:  # EIO: every process holding the terminal has closed it
                    break
                if not data:
                    break
                chunks.append(data)
            elif process.poll() is not None:
                break
        assert time.monotonic() < deadline, f"no end in {WAIT_S} s: {b''.join(chunks)[-3000:]!r}"
        return process.wait(timeout=30), b"".join(chunks).decode(errors="replace")
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        os.close(master)


def screen_lines(output: str) -> list[str]:
    """The text the display drew, one entry per line or redraw, escape sequences removed."""
    return [line.strip() for line in re.split(r"[\r\n]+", ANSI.sub("", output)) if line.strip()]


def test_a_terminal_shows_trials_stage_step_front_and_eta_live_with_warnings_above(tmp_path, cache):
    # every plan feasible: the display is under test, not whether the tiny net keeps its accuracy in int8
    # (with 7-bit weights, on CPUs without VNNI, the int8 reference lost more than a point)
    code, output = on_a_terminal(search_command(tmp_path, cache, "live", "tracking=none", "quiet=false",
                                                "evaluator.constraints=[{metric: accuracy_drop, max: 100}]"),
                                 cwd=tmp_path)
    lines = screen_lines(output)
    text = "\n".join(lines)
    assert code == 0, text[-3000:]
    assert "\x1b[" in output, "no escape sequences: the live display did not draw"
    assert re.search(r"^\S? ?trial 2: finetune 5/10$", text, re.M), text[-3000:]
    for stage in ("prune", "export", "quantize", "evaluate"):
        assert re.search(rf"trial \d: {stage}$", text, re.M), stage
    counters = re.findall(r"^trials (\d)/3\b.*front (\d) · best size ratio (\S+) · best speedup (\S+) · ETA (.+)$",
                          text, re.M)
    assert {c[0] for c in counters} == {"0", "1", "2", "3"}, counters
    assert ("0", "0", "–", "–", "unknown") in counters  # before the first trial ends nothing is known
    # after a trial: the front's figures and an ETA from the finished trial's wall time
    later = [c for c in counters if c[0] != "0"]
    assert all(re.fullmatch(r"\d+\.\d\dx", c[2]) and re.fullmatch(r"\d+\.\d\dx", c[3]) for c in later), later
    assert all(int(c[1]) >= 1 and re.fullmatch(r"\d+ s|\d+ min \d\d s|\d+ h \d\d min", c[4]) for c in later), later
    assert max(float(c[2][:-1]) for c in later) > 2  # the int8 reference is several times smaller
    # each log record on a line of its own above the display, never inside it
    assert any(re.fullmatch(rf"\d\d:\d\d:\d\d WARNING {WARNING}", line) for line in lines), text[-3000:]
    assert len([line for line in lines if re.fullmatch(r"\d\d:\d\d:\d\d INFO trial \d done in .*", line)]) == 3
    assert "search ended" in text and "Pareto front of study 'live'" in text


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory) -> str:
    """A real MLflow tracking server on a free local port, stopped after the module."""
    tmp = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    command = [str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
               "--backend-store-uri", f"sqlite:///{tmp / 'm.db'}", "--workers", "1"]
    with serving(command, f"http://127.0.0.1:{port}/health", cwd=tmp, log=tmp / "server.log"):
        yield f"http://127.0.0.1:{port}"


def search_to(server: str, tmp: Path, cache: Path, study: str, *overrides: str) -> str:
    """A search tracked to ``server`` with its output on a pipe; everything it printed."""
    command = search_command(tmp, cache, study, f"tracking.uri={server}", f"tracking.experiment={study}",
                             "tracking.log_front_models=false", *overrides)
    done = subprocess.run(command, cwd=tmp, env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=WAIT_S)
    assert done.returncode == 0, done.stdout[-3000:]
    return done.stdout


def test_a_log_gets_one_line_per_finished_trial_with_its_eta(mlflow_server, tmp_path, cache):
    output = search_to(mlflow_server, tmp_path, cache, "plain", "quiet=false")
    lines = output.splitlines()
    assert "\x1b[" not in output  # no live display, no colour
    trials = {t.number for t in finished(tmp_path, "plain")}
    per_trial = [FINISHED.search(line) for line in lines]
    numbers = [int(m.group(1)) for m in per_trial if m]
    assert sorted(numbers) == sorted(trials) and len(trials) >= 3, output[-3000:]
    assert all(re.search(r"\| \d/3, (front \d, )?ETA (\d+ s|\d+ min \d\d s|\d+ h \d\d min)$", line)
               for line in lines if FINISHED.search(line)), output[-3000:]
    assert not [line for line in lines if line.endswith(STAGES)], "per-stage lines are for the live display"
    assert f"WARNING {WARNING}" in output
    # MLflow's own "View run ... at" lines are replaced by one line with the study's run
    assert "View run" not in output and "View experiment" not in output
    assert len(re.findall(rf"MLflow run of the study: {mlflow_server}/#/experiments/\d+/runs/\w+", output)) == 1


def test_quiet_keeps_warnings_and_the_front_and_no_mlflow_lines(mlflow_server, tmp_path, cache, monkeypatch, capsys):
    # what MLflow does by itself: a run ended on a tracking server prints its URLs
    monkeypatch.delenv("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", raising=False)
    client = MlflowClient(mlflow_server)
    run = client.create_run(client.create_experiment("control"))
    client.set_terminated(run.info.run_id)
    printed = capsys.readouterr().out
    assert "🏃 View run" in printed and "🧪 View experiment" in printed

    output = search_to(mlflow_server, tmp_path, cache, "quiet", "quiet=true")
    assert "View run" not in output and "View experiment" not in output
    assert " INFO " not in output and not FINISHED.search(output)
    assert f"WARNING {WARNING}" in output and "Pareto front of study 'quiet'" in output
    runs = client.search_runs([client.get_experiment_by_name("quiet").experiment_id], "tags.kind = 'trial'")
    assert len(runs) == len(finished(tmp_path, "quiet")) >= 3  # the trials were tracked to the server


def test_a_resumed_search_counts_from_its_completed_trials():
    progress = Progress(budget=36, timeout=None, done=24)
    assert progress.where() == "24/36, ETA unknown"


def test_a_timeout_bounds_the_eta():
    assert Progress(budget=None, timeout=600, done=3).where() == "3 done, ETA 10 min 00 s"


def _trial(seconds: float | None, state: TrialState | None = None, *,
           fine_tuned: bool | None = None) -> optuna.trial.FrozenTrial:
    start = datetime(2026, 1, 1, 12, 0, 0)
    state = state or (TrialState.RUNNING if seconds is None else TrialState.COMPLETE)
    attrs = {} if fine_tuned is None else {"result": {"curve": [[10, 0.5, 80.0]] if fine_tuned else []}}
    return optuna.trial.FrozenTrial(
        number=0, state=state, value=1.0 if state == TrialState.COMPLETE else None, datetime_start=start,
        datetime_complete=None if seconds is None else start + timedelta(seconds=seconds), params={},
        distributions={}, user_attrs=attrs, system_attrs={}, intermediate_values={}, trial_id=0)


def test_the_eta_is_the_median_trial_times_the_rounds_the_running_workers_need():
    study = optuna.create_study()
    for seconds in (10, 20, 40):
        study.add_trial(_trial(seconds))
    assert estimate(study, budget=6, done=3) == 60  # median 20 s x 3 trials left, one worker
    study.add_trial(_trial(None))  # another worker is running a trial
    assert estimate(study, budget=6, done=3) == 40  # two rounds of two
    assert estimate(study, budget=3, done=3) == 0
    assert estimate(study, budget=None, done=3) is None
    assert estimate(optuna.create_study(), budget=3, done=0) is None


def test_once_a_trial_fine_tuned_the_unpruned_references_before_it_no_longer_set_the_pace():
    study = optuna.create_study()
    for seconds in (8, 7):  # fp32 and int8 references: no fine-tune
        study.add_trial(_trial(seconds, fine_tuned=False))
    assert estimate(study, budget=12, done=2) == 10 * 7.5
    study.add_trial(_trial(130, fine_tuned=True))  # the first pruned plan
    assert estimate(study, budget=12, done=3) == 9 * 130  # not the median of 7, 8 and 130 s


def test_trials_that_did_not_complete_are_carried_by_those_that_did():
    study = optuna.create_study()
    for seconds in (10, 20, 40):
        study.add_trial(_trial(seconds))
    study.add_trial(_trial(30, TrialState.PRUNED))  # stopped early: not counted, but its time was spent
    assert estimate(study, budget=6, done=3) == 90  # (median 20 s + 30 s / 3 completed) x 3 trials left


def test_a_frame_drawn_while_a_finished_trial_is_counted_never_pairs_the_new_count_with_no_eta(monkeypatch):
    """The live display redraws from its own thread; a frame drawn while the ETA is being worked out
    (a query of the study) must show the state before the trial or after it, never half of each."""
    import search.progress as progress_module

    study = optuna.create_study()
    study.add_trial(_trial(20))
    progress = Progress(budget=3, timeout=None, done=0)
    frames = []

    def estimate_while_drawing(*args, **kwargs):
        frames.append(progress.where())  # what a redraw at this moment shows
        return estimate(*args, **kwargs)

    monkeypatch.setattr(progress_module, "estimate", estimate_while_drawing)
    progress.trial_done(study, study.trials[0], front_size=1)
    assert frames == ["0/3, ETA unknown"]
    assert progress.where() == "1/3, ETA 40 s"
