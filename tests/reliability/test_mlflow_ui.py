"""The MLflow UI, seen in a real browser as a newcomer sees it: the quickstart (tiny model) from
the command line into a tmp store, `mlflow ui` as the README starts it (loopback only) on a free
port, and Debian's headless chromium driven by Selenium from the home page to the address the run
printed. Screenshots land in $FIDELITY_TEST_ARTIFACTS (default mlruns/test-artifacts/); look at
them. `make test` installs chromium and chromium-driver."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from ..conftest import REPO
from ..command import cli

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
METRIC = "finetuned/divergence/js/mean"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_http(url: str, server: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert server.poll() is None, "mlflow ui exited:\n" + server.stdout.read()[-3000:]
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"mlflow ui did not answer at {url}")


def _browser(profile: Path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-quic", f"--user-data-dir={profile}", "--window-size=1600,1000"):
        options.add_argument(flag)
    # the driver is Debian's: Selenium Manager (which would download one) is never asked
    return webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)


def _visible_text_with(driver, *needles: str, timeout: float = 90) -> str:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    found = {}

    def ready(d):
        found["text"] = d.find_element(By.TAG_NAME, "body").text   # what is rendered, not the raw HTML
        return all(n in found["text"] for n in needles)

    try:
        WebDriverWait(driver, timeout, poll_frequency=0.5).until(ready)
    except Exception:
        text = found.get("text", "")[:2000]
        raise AssertionError(f"{needles} not visible at {driver.current_url}:\n{text}") from None
    return found["text"]


def _click_text(driver, text: str, *, prefix: bool = False, below: int = 0, right_of: int = 0,
                left_of: int = 10_000, timeout: float = 60) -> None:
    """Click (as a user would) the first element whose own text is `text` (or starts with it),
    within a region of the page (pixels), once it is there."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    test = f"starts-with(normalize-space(text()), '{text}')" if prefix else f"normalize-space(text())='{text}'"

    def found(d):
        hits = [e for e in d.find_elements(By.XPATH, f"//*[{test}]") if e.is_displayed()
                and e.location["y"] >= below and right_of <= e.location["x"] < left_of]
        return hits[0] if hits else False

    try:
        element = WebDriverWait(driver, timeout, poll_frequency=0.5).until(found)
    except Exception:
        raise AssertionError(f"no {text!r} to click at {driver.current_url}") from None
    element.click()


@pytest.mark.slow
def test_the_newcomer_path_through_the_mlflow_ui(tmp_path):
    """From the home page to the address the run printed: the runs table (Dataset and Source
    filled), the run page (the description's answer first: did fine-tuning help; then its
    headline table, the Datasets panel, the metric),
    the report artifact, a plot previewed, and the Traces tab with one twin's interview."""
    assert CHROMIUM.exists() and CHROMEDRIVER.exists(), (
        "Debian's chromium and chromium-driver are needed: `make browser` (run by `make test`) installs them")
    shots = Path(os.environ.get("FIDELITY_TEST_ARTIFACTS", REPO / "mlruns" / "test-artifacts"))
    shots.mkdir(parents=True, exist_ok=True)

    port = _free_port()
    done = cli("+experiment=quickstart", "model=tiny_random", "finetune.max_steps=2", "eval.n=40",
               "metrics.bootstrap=5", "metrics.reference_splits=2", "tracking.traces_per_arm=5",
               f"tracking.ui_url=http://127.0.0.1:{port}", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    printed = re.search(r"MLflow run: (http://\S+)", done.stderr + done.stdout).group(1)
    assert printed.endswith("?workflowType=machine_learning")
    experiment_id, run_id = re.search(r"#/experiments/(\d+)/runs/([0-9a-f]{32})", printed).groups()
    store = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    run = MlflowClient(store).get_run(run_id)

    mlflow = shutil.which("mlflow", path=str(Path(sys.executable).parent)) or "mlflow"
    server = subprocess.Popen(   # the README's `make ui` command, on a free port and the tmp store
        [mlflow, "ui", "--host", "127.0.0.1", "--port", str(port), "--backend-store-uri", store,
         "--default-artifact-root", str(tmp_path / "mlruns" / "artifacts")],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    driver = None
    try:
        base = f"http://127.0.0.1:{port}"
        _wait_http(f"{base}/health", server)
        driver = _browser(tmp_path / "chromium-profile")
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support import expected_conditions as ec
        from selenium.webdriver.support.ui import WebDriverWait

        driver.get(base)                                          # the home page
        _visible_text_with(driver, "anes96")
        driver.save_screenshot(str(shots / "mlflow_ui_home.png"))

        # the experiment, through the address the run printed: the runs table, not the GenAI overview
        driver.get(printed.split("/runs/")[0] + "?workflowType=machine_learning")
        listed = _visible_text_with(driver, "quickstart", "anes96-pilot", "python -m fidelity_exp")
        assert "No data available" not in listed
        driver.save_screenshot(str(shots / "mlflow_ui_runs.png"))

        driver.get(printed)                                       # the run page: description, datasets
        first = _visible_text_with(driver, "The answer", "anes96-pilot", "Source")   # before "Show more"
        assert "finetuned" in first and "Fine-tuning" in first, first[:2000]   # did fine-tuning help, first
        driver.save_screenshot(str(shots / "mlflow_ui_answer.png"))
        _click_text(driver, "Show more")
        _click_text(driver, "+5")
        page = _visible_text_with(driver, "Headline metrics", "human split-half", "fidelity_score", "anes96-evaluation",
                                  "anes96-synthetic-finetuned", "anes96-synthetic-tabular")
        assert "No description" not in page
        driver.save_screenshot(str(shots / "mlflow_ui_run.png"))

        driver.get(f"{base}/#/experiments/{experiment_id}/runs/{run_id}/artifacts/report/report.html")
        _visible_text_with(driver, "report/report.html")
        WebDriverWait(driver, 60).until(ec.frame_to_be_available_and_switch_to_it((By.TAG_NAME, "iframe")))
        report = _visible_text_with(driver, "fidelity_exp report: anes96", "fidelity_score")
        assert "finetuned" in report
        driver.switch_to.default_content()
        driver.save_screenshot(str(shots / "mlflow_ui_report.png"))

        driver.get(f"{base}/#/experiments/{experiment_id}/runs/{run_id}/artifacts/report/plots/distributions.png")
        driver.refresh()   # a change of the address's #fragment alone does not reload the artifact view
        _visible_text_with(driver, "distributions.png")
        WebDriverWait(driver, 120).until(lambda d: any(img.size["width"] > 300 for img in d.find_elements(By.TAG_NAME,
                                                                                                         "img")))
        driver.save_screenshot(str(shots / "mlflow_ui_plot.png"))

        driver.get(printed)                                       # the run's Traces tab: its twins
        _visible_text_with(driver, "The answer")
        _click_text(driver, "Traces", below=60, right_of=300)
        _visible_text_with(driver, "human/vote", "persona")
        driver.save_screenshot(str(shots / "mlflow_ui_traces.png"))
        _click_text(driver, "tr-", prefix=True)                   # one twin's interview
        _visible_text_with(driver, "twin of", "selfLR", "vote")
        _click_text(driver, "vote", left_of=300)                  # its vote question (the span tree)
        span = _visible_text_with(driver, "option_probabilities", "Who do you expect to vote for")
        assert "Bill Clinton" in span
        driver.save_screenshot(str(shots / "mlflow_ui_trace.png"))
        _click_text(driver, "finetuned: twin of", prefix=True, left_of=300)   # the twin: its assessments
        assess = [b for b in driver.find_elements(By.TAG_NAME, "button") if (b.text or "").startswith("Assess")]
        assess[0].click()                                         # the human's answers: expectations
        _visible_text_with(driver, "Expectations", "human/vote", "Feedback")
        driver.save_screenshot(str(shots / "mlflow_ui_trace_assessments.png"))
    finally:
        if driver is not None:
            driver.quit()
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, 9)
    assert run.data.tags["mlflow.source.name"] == "python -m fidelity_exp"
    assert (shots / "mlflow_ui_trace.png").stat().st_size > 10_000
