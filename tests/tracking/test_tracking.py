"""Each job is one MLflow run in a tmp store: params, tags, artifacts, status."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from fidelity_exp import pipeline
from fidelity_exp.errors import ConfigError
from fidelity_exp.study import draw_split, load_study, spec_from_config
from fidelity_exp.tracking import start_run, tracking_uri


SMALL = ("metrics.bootstrap=10", "metrics.reference_splits=2")


def _runs(uri: str, experiment: str):
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    return client, ([] if exp is None else client.search_runs([exp.experiment_id]))


def test_quickstart_writes_a_complete_run_to_the_tmp_store(composer, tmp_path):
    cfg, choices = composer("+experiment=quickstart")
    uri = tracking_uri(cfg)
    assert uri == f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    result = pipeline.run(cfg, choices=choices, overrides=["+experiment=quickstart"], output_dir=tmp_path / "out")

    client, runs = _runs(uri, "anes96")
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED" and run.info.run_name == "quickstart"
    params = run.data.params
    assert params["pilot.n"] == "100" and params["pilot.method"] == "random" and params["seed"] == "0"
    assert params["data.name"] == "anes96" and params["data.source.kind"] == "statsmodels"
    assert params["split.n_pilot"] == "100" and params["split.n_evaluation"] == "844"
    tags = run.data.tags
    assert tags["study.name"] == "anes96" and tags["study.version"] == "1"
    assert tags["hydra.overrides"] == '["+experiment=quickstart"]' and "arms" in tags
    assert run.info.artifact_uri.startswith(f"file://{tmp_path}/mlruns/artifacts/anes96/")
    files = {f.path for d in ("config", "split") for f in client.list_artifacts(run.info.run_id, d)}
    assert files == {"config/config.yaml", "config/study_spec.yaml", "split/pilot_ids.csv", "split/evaluation_ids.csv"}

    # the metrics: every arm's keys, the reference, and the same values in metrics.json and MLflow
    assert "arms" in tags and tags["arms"] == "pilot_resample,tabular"
    for arm in ("pilot_resample", "tabular"):
        assert run.data.metrics[f"{arm}/fidelity_score"] == pytest.approx(result[f"{arm}/fidelity_score"])
        assert f"{arm}/divergence/js/mean/ci_low" in run.data.metrics
    assert "reference/human_split/fidelity_score" in run.data.metrics
    assert not any(v is None for k, v in result.items() if k in run.data.metrics)
    logged = {f.path for f in client.list_artifacts(run.info.run_id)}
    assert {"metrics.json", "synthetic", "report"} <= logged
    report = {f.path for f in client.list_artifacts(run.info.run_id, "report")}
    assert {"report/report.md", "report/report.html", "report/plots"} <= report
    md = open(client.download_artifacts(run.info.run_id, "report/report.md", str(tmp_path))).read()
    assert "| metric | direction | pilot_resample | tabular | human split-half |" in md   # the baselines side by side
    html = open(client.download_artifacts(run.info.run_id, "report/report.html", str(tmp_path))).read()
    assert html.count("data:image/png;base64,") == 3
    assert json.loads((tmp_path / "out" / "metrics.json").read_text()) == result

    # the logged pilot ids are the split the pipeline drew
    local = client.download_artifacts(run.info.run_id, "split/pilot_ids.csv", str(tmp_path))
    study = load_study(spec_from_config(cfg.data, origin="anes96"))
    expected = draw_split(study, n=100, seed=0).pilot
    assert list(pd.read_csv(local)["id"]) == list(expected)


def test_environment_tracking_uri_wins(composer, tmp_path, monkeypatch):
    other = f"sqlite:///{tmp_path}/elsewhere.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", other)
    cfg, choices = composer("+experiment=quickstart", "tracking.experiment=from_env", *SMALL)
    assert tracking_uri(cfg) == other
    pipeline.run(cfg, choices=choices, output_dir=tmp_path / "out")
    assert len(_runs(other, "from_env")[1]) == 1
    assert not (tmp_path / "mlruns" / "mlflow.db").exists()


def test_relative_sqlite_uri_is_pinned_to_the_start_directory(composer, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg, _ = composer("tracking.uri=sqlite:///rel/store.db")
    assert tracking_uri(cfg) == f"sqlite:///{tmp_path}/rel/store.db"


def test_a_failing_run_is_marked_failed_with_the_reason(composer):
    cfg, _ = composer("tracking.experiment=failing")
    with pytest.raises(RuntimeError):
        with start_run(cfg, run_name="boom", tags={}):
            raise RuntimeError("simulated crash")
    _, runs = _runs(tracking_uri(cfg), "failing")
    assert [r.info.status for r in runs] == ["FAILED"]
    assert runs[0].data.tags["error"] == "RuntimeError: simulated crash"


def test_bad_input_creates_no_run(composer, tmp_path):
    cfg, choices = composer("+experiment=quickstart", "pilot.n=5000")
    with pytest.raises(ConfigError, match="pilot.n=5000"):
        pipeline.run(cfg, choices=choices)
    assert not (tmp_path / "mlruns" / "mlflow.db").exists()


def test_same_seed_same_split_different_seed_different_split(composer):
    cfg, choices = composer("+experiment=quickstart")
    study = pipeline.setup_study(cfg.data, choices["data"])
    first = pipeline.setup_split(cfg.pilot, cfg.eval, study)
    again = pipeline.setup_split(cfg.pilot, cfg.eval, study)
    assert list(first.pilot) == list(again.pilot)
    cfg2, _ = composer("+experiment=quickstart", "seed=1")
    assert list(pipeline.setup_split(cfg2.pilot, cfg2.eval, study).pilot) != list(first.pilot)


def test_evaluate_with_a_broken_file_is_refused_before_any_run(composer, tmp_path):
    broken = tmp_path / "twins.csv"
    pd.DataFrame({"twin_of": [1, 2], "selfLR": [3, 99]}).to_csv(broken, index=False)
    cfg, choices = composer("+experiment=evaluate", f"evaluate.synthetic={broken}")
    from fidelity_exp.errors import SpecError

    with pytest.raises(SpecError) as info:
        pipeline.run(cfg, choices=choices, output_dir=tmp_path / "out")
    message = str(info.value)
    assert str(broken) in message and "column 'ClinLR' is not in" in message
    assert not (tmp_path / "mlruns" / "mlflow.db").exists() and not (tmp_path / "out").exists()


def test_evaluate_needs_a_synthetic_file(composer, tmp_path):
    cfg, choices = composer("+experiment=evaluate")
    with pytest.raises(ConfigError, match="evaluate.synthetic"):
        pipeline.run(cfg, choices=choices, output_dir=tmp_path / "out")
