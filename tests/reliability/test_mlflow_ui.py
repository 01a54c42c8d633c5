"""The MLflow UI, seen in a real browser: the quickstart (tiny model) into a tmp store, `mlflow ui`
as the README starts it (loopback only) on a free port, and Debian's headless chromium driven by
Selenium to the experiment: the run is listed, its `finetuned/divergence/js/mean` metric is
visible, and the `report.html` artifact opens. Screenshots land in $FIDELITY_TEST_ARTIFACTS
(default mlruns/test-artifacts/). `make test` installs chromium and chromium-driver."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from fidelity_exp import pipeline
from fidelity_exp.tracking import tracking_uri

from ..conftest import REPO

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


@pytest.mark.slow
def test_quickstart_run_metric_and_report_in_the_mlflow_ui(composer, tmp_path):
    assert CHROMIUM.exists() and CHROMEDRIVER.exists(), (
        "Debian's chromium and chromium-driver are needed: `make browser` (run by `make test`) installs them")
    shots = Path(os.environ.get("FIDELITY_TEST_ARTIFACTS", REPO / "mlruns" / "test-artifacts"))
    shots.mkdir(parents=True, exist_ok=True)

    cfg, choices = composer("+experiment=quickstart", "model=tiny_random", "finetune.max_steps=2", "eval.n=40",
                            "metrics.bootstrap=5", "metrics.reference_splits=2")
    pipeline.run(cfg, choices=choices, output_dir=tmp_path / "out")
    client = MlflowClient(tracking_uri(cfg))
    experiment = client.get_experiment_by_name("anes96")
    (run,) = client.search_runs([experiment.experiment_id])

    port = _free_port()
    mlflow = shutil.which("mlflow", path=str(Path(sys.executable).parent)) or "mlflow"
    server = subprocess.Popen(   # the README's `make ui` command, on a free port and the tmp store
        [mlflow, "ui", "--host", "127.0.0.1", "--port", str(port), "--backend-store-uri", tracking_uri(cfg),
         "--default-artifact-root", str(tmp_path / "mlruns" / "artifacts")],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    driver = None
    try:
        base = f"http://127.0.0.1:{port}"
        _wait_http(f"{base}/health", server)
        driver = _browser(tmp_path / "chromium-profile")

        driver.get(f"{base}/#/experiments/{experiment.experiment_id}/runs")
        listed = _visible_text_with(driver, "quickstart", "1 matching run")
        assert "anes96" in listed
        driver.save_screenshot(str(shots / "mlflow_ui_runs.png"))

        from selenium.webdriver.common.by import By
        from selenium.webdriver.support import expected_conditions as ec
        from selenium.webdriver.support.ui import WebDriverWait

        driver.get(f"{base}/#/experiments/{experiment.experiment_id}/runs/{run.info.run_id}")
        _visible_text_with(driver, METRIC)
        cell = driver.find_element(By.XPATH, f"//*[normalize-space(text())='{METRIC}']")
        driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", cell)
        assert cell.is_displayed()
        value = f"{run.data.metrics[METRIC]}"[:6]   # the value beside it, as MLflow prints it
        assert value in _visible_text_with(driver, value)
        driver.save_screenshot(str(shots / "mlflow_ui_run.png"))

        driver.get(f"{base}/#/experiments/{experiment.experiment_id}/runs/{run.info.run_id}"
                   "/artifacts/report/report.html")
        _visible_text_with(driver, "report/report.html")
        WebDriverWait(driver, 60).until(ec.frame_to_be_available_and_switch_to_it((By.TAG_NAME, "iframe")))
        report = _visible_text_with(driver, "fidelity_exp report: anes96", "fidelity_score")
        assert "finetuned" in report
        driver.switch_to.default_content()
        driver.save_screenshot(str(shots / "mlflow_ui_report.png"))
    finally:
        if driver is not None:
            driver.quit()
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, 9)
    assert (shots / "mlflow_ui_report.png").stat().st_size > 10_000
