"""What a person sees: the MLflow UI (headless Chromium via Selenium) and optuna-dashboard on a real study.

Needs Debian's ``chromium`` and ``chromium-driver`` (``.ci/setup`` installs them) and the
``selenium`` and ``optuna-dashboard`` packages of the ``test`` extra. Every wait is bounded;
servers and the browser are always stopped.
"""
from __future__ import annotations

import json
import sys
import tempfile
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Iterator

import optuna
import pytest
from mlflow.tracking import MlflowClient
from selenium import webdriver
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

from evaluators import Accuracy, Constraint, Latency, Objective, Size
from search.trials.finetune import FinetuneSettings
from search.runner import Job, run_search
from search.study import SearchSettings
from search.inspect.tracking import TrackingSettings
from spaces.kinds.prune import PruneSpec
from spaces.kinds.quant import QuantSpec
from servers import WAIT_S, free_port, serving
from stores import baseline_cache, fresh_mlflow_store
from tinynet import tiny_net

STUDY = "ui"
CHROMEDRIVER, CHROMIUM = "/usr/bin/chromedriver", "/usr/bin/chromium"
CHROME_FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--no-first-run", "--window-size=1920,1080")
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def study(tmp_path_factory, small_splits) -> tuple[Job, Path]:
    """A real 3-trial search on the tiny CNN, logged to a sqlite MLflow store.

    The third reference plan prunes a quarter of the channels with 10 fine-tune steps: it
    loses far more than a point of accuracy, so it is infeasible and its ``pareto`` tag is false.
    """
    tmp = tmp_path_factory.mktemp("ui")
    job = Job(make_model=tiny_net, data=small_splits, evaluators=[Accuracy(), Size(level=3), Latency(runs=20)],
              objectives=[Objective("accuracy", "maximize"), Objective("size_bytes", "minimize")],
              constraints=[Constraint("accuracy_drop", 1.0)],
              search=SearchSettings(study_name=STUDY, n_trials=3, sampler="random"),
              run_dir=tmp / "run", cache_dir=baseline_cache(tmp_path_factory), model_key="tiny-60",
              baseline_training=FinetuneSettings(steps=60, log_every=20), finetune=FinetuneSettings(steps=10),
              prune=PruneSpec(ratios=(0.0, 0.25)), quant=QuantSpec(precisions=("fp32", "int8")),
              tracking=TrackingSettings(uri=fresh_mlflow_store(tmp_path_factory, tmp, STUDY), experiment=STUDY))
    run_search(job)
    return job, tmp


@pytest.fixture
def browser() -> Iterator[WebDriver]:
    """Headless Debian Chromium with a fresh profile, always quit afterwards."""
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROME_FLAGS:
        options.add_argument(flag)
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        options.add_argument(f"--user-data-dir={profile}")
        driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
        try:
            driver.set_page_load_timeout(WAIT_S)
            yield driver
        finally:
            driver.quit()


def button(driver: WebDriver, text: str):
    found = [b for b in driver.find_elements(By.CSS_SELECTOR, "button") if b.text.strip() == text]
    return found[0] if found else None


def add_columns(driver: WebDriver, names: tuple[str, ...]) -> None:
    """Tick metric/tag columns in the runs table's "Columns" picker, as a user would."""
    button(driver, "Columns").click()
    box = WebDriverWait(driver, WAIT_S).until(
        lambda d: d.find_element(By.CSS_SELECTOR, "input[placeholder='Search columns']"))
    for name in names:
        box.send_keys(Keys.CONTROL, "a")
        box.send_keys(Keys.BACKSPACE, name)
        entry = WebDriverWait(driver, WAIT_S).until(lambda d: [
            t for t in d.find_elements(By.CSS_SELECTOR, ".du-bois-light-tree-title") if t.text == name])
        entry[0].click()
    box.send_keys(Keys.ESCAPE)


# Every rendered grid cell as [row index, column id, shown text], read in one round trip.
CELLS_JS = """return Array.from(document.querySelectorAll('[role=row][row-index] [role=gridcell][col-id]'))
  .map(c => [c.closest('[row-index]').getAttribute('row-index'), c.getAttribute('col-id'), c.innerText.trim()]);"""
RUN_NAME = "attributes.`Run Name`"


def table(driver: WebDriver) -> dict[str, dict[str, str]]:
    """Rendered rows of the runs table: run name -> {column id: shown text} (the grid splits rows in two)."""
    rows: dict[str, dict[str, str]] = {}
    for index, column, text in driver.execute_script(CELLS_JS):
        rows.setdefault(index, {})[column] = text
    # the name cell shows a colour label above the name
    return {row[RUN_NAME].splitlines()[-1]: row for row in rows.values() if row.get(RUN_NAME)}


def expand_parents(driver: WebDriver) -> None:
    """Nested trial runs hide under the study's run until its expander is clicked."""
    for toggle in driver.find_elements(By.CSS_SELECTOR, "button[data-component-id*=runnamecellrenderer]"):
        toggle.click()


def shown_trials(driver: WebDriver, expected: set[str]) -> dict[str, dict[str, str]] | None:
    rows = table(driver)
    if not expected <= set(rows):
        expand_parents(driver)
        return None
    filled = all(rows[n].get("metrics.`accuracy`", "-") != "-" and rows[n].get("tags.`pareto`") for n in expected)
    return {n: rows[n] for n in expected} if filled else None


def test_mlflow_ui_shows_the_trial_runs_with_accuracy_and_pareto(study, browser, tmp_path):
    job, tmp = study
    client = MlflowClient(job.tracking.uri)
    experiment = client.get_experiment_by_name(STUDY)
    trials = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id], "tags.kind = 'trial'")}
    assert set(trials) == {"trial-0", "trial-1", "trial-2"}
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    command = [str(BIN / "mlflow"), "server", "--backend-store-uri", job.tracking.uri, "--host", "127.0.0.1",
               "--port", str(port), "--workers", "1"]
    with serving(command, f"{base}/health", cwd=tmp, log=tmp_path / "mlflow-server.log"):
        query = urllib.parse.urlencode({"searchFilter": "tags.kind = 'trial'"})
        browser.get(f"{base}/#/experiments/{experiment.experiment_id}/runs?{query}")
        WebDriverWait(browser, WAIT_S).until(lambda d: button(d, "Columns") and table(d))
        for close in browser.find_elements(By.CSS_SELECTOR, "button[aria-label=Close]"):
            close.click()  # the assistant side panel: more room for the table
        add_columns(browser, ("accuracy", "pareto"))
        rows = WebDriverWait(browser, WAIT_S, ignored_exceptions=(WebDriverException,)).until(
            lambda d: shown_trials(d, set(trials)))
        headers = browser.find_element(By.CSS_SELECTOR, "[role=grid], .ag-root").text
        screenshot = tmp_path / "mlflow-runs.png"
        assert browser.save_screenshot(str(screenshot))
        print(f"\nMLflow runs table screenshot: {screenshot}")
    assert "accuracy" in headers and "pareto" in headers
    for name, run in trials.items():
        assert float(rows[name]["metrics.`accuracy`"]) == pytest.approx(run.data.metrics["accuracy"], abs=0.01)
        assert rows[name]["tags.`pareto`"] == run.data.tags["pareto"]
    assert {row["tags.`pareto`"] for row in rows.values()} == {"true", "false"}


def test_optuna_dashboard_lists_the_study_and_its_trials(study, tmp_path):
    job, tmp = study
    expected = optuna.load_study(study_name=STUDY, storage=job.storage_url)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    command = [str(BIN / "optuna-dashboard"), job.storage_url, "--host", "127.0.0.1", "--port", str(port)]
    with serving(command, f"{base}/api/studies", cwd=tmp, log=tmp_path / "dashboard.log"):
        with urllib.request.urlopen(f"{base}/api/studies", timeout=10) as response:
            summaries = json.load(response)["study_summaries"]
        listed = {s["study_name"]: s["study_id"] for s in summaries}
        assert STUDY in listed
        with urllib.request.urlopen(f"{base}/api/studies/{listed[STUDY]}", timeout=30) as response:
            detail = json.load(response)
    assert detail["name"] == STUDY
    assert len(detail["trials"]) == len(expected.trials) == 3
    assert [t["state"] for t in detail["trials"]] == ["Complete"] * 3
