"""Each job is one MLflow run in a tmp store: params, tags, artifacts, status."""

from __future__ import annotations

import json
import time

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from fidelity_exp import pipeline
from fidelity_exp.errors import ConfigError, UserError
from fidelity_exp.study import draw_split, load_study, spec_from_config

from ..conftest import split_of, start_run_of, store_uri
from .races import RACES, race_two_trials


SMALL = ("metrics.bootstrap=10", "metrics.reference_splits=2", "metrics.permutations=20")
# The quickstart's recipe at test size: the tiny random model, a short fine-tune, 60 twins.
TINY = ("model=tiny_random", "finetune.max_steps=2", "eval.n=60")


def _runs(uri: str, experiment: str):
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    return client, ([] if exp is None else client.search_runs([exp.experiment_id]))


def test_quickstart_writes_a_complete_run_to_the_tmp_store(composer, tmp_path):
    cfg, choices = composer("+experiment=quickstart", *TINY)
    uri = store_uri(cfg)
    assert uri == f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    result = pipeline.run(cfg, choices=choices, overrides=["+experiment=quickstart"], output_dir=tmp_path / "out")

    client, runs = _runs(uri, "anes96")
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED" and run.info.run_name == "quickstart"
    params = run.data.params
    assert params["pilot.n"] == "100" and params["pilot.method"] == "stratified" and params["seed"] == "0"
    assert params["data.name"] == "anes96" and params["data.source.kind"] == "statsmodels"
    assert params["split.n_pilot"] == "100" and params["split.n_evaluation"] == "60"
    tags = run.data.tags
    assert tags["study.name"] == "anes96" and tags["study.version"] == "1"
    assert tags["hydra.overrides"] == '["+experiment=quickstart"]' and "arms" in tags
    assert run.info.artifact_uri.startswith(f"file://{tmp_path}/mlruns/artifacts/anes96/")
    files = {f.path for d in ("config", "split") for f in client.list_artifacts(run.info.run_id, d)}
    assert files == {"config/config.yaml", "config/study_spec.yaml", "split/pilot_ids.csv", "split/evaluation_ids.csv"}

    # the metrics: every arm's keys, the reference, and the same values in metrics.json and MLflow
    assert tags["arms"] == "base,finetuned,pilot_resample,tabular"
    for arm in ("base", "finetuned", "pilot_resample", "tabular"):
        assert run.data.metrics[f"{arm}/fidelity_score"] == pytest.approx(result[f"{arm}/fidelity_score"])
        assert f"{arm}/divergence/js/mean/ci_low" in run.data.metrics
    assert "reference/human_split/fidelity_score" in run.data.metrics
    assert not any(v is None for k, v in result.items() if k in run.data.metrics)
    logged = {f.path for f in client.list_artifacts(run.info.run_id)}
    assert {"metrics.json", "synthetic", "report"} <= logged
    report = {f.path for f in client.list_artifacts(run.info.run_id, "report")}
    assert {"report/report.md", "report/report.html", "report/plots"} <= report
    md = open(client.download_artifacts(run.info.run_id, "report/report.md", str(tmp_path))).read()
    assert "| metric | direction | base | finetuned | pilot_resample | tabular | human split-half |" in md
    html = open(client.download_artifacts(run.info.run_id, "report/report.html", str(tmp_path))).read()
    assert html.count("data:image/png;base64,") == 4   # distributions, subgroup JS, coefficients, option order
    assert json.loads((tmp_path / "out" / "metrics.json").read_text()) == result

    # the logged pilot ids are the split the pipeline drew
    local = client.download_artifacts(run.info.run_id, "split/pilot_ids.csv", str(tmp_path))
    study = load_study(spec_from_config(cfg.data, origin="anes96"))
    expected = draw_split(study, method="stratified", by="party", n=100, seed=0, eval_n=60).pilot
    assert list(pd.read_csv(local)["id"]) == list(expected)


def test_environment_tracking_uri_wins(composer, tmp_path, monkeypatch):
    other = f"sqlite:///{tmp_path}/elsewhere.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", other)
    cfg, choices = composer("+experiment=quickstart", "tracking.experiment=from_env", "arms=[tabular]", *SMALL)
    assert store_uri(cfg) == other
    pipeline.run(cfg, choices=choices, output_dir=tmp_path / "out")
    assert len(_runs(other, "from_env")[1]) == 1
    assert not (tmp_path / "mlruns" / "mlflow.db").exists()


def test_relative_sqlite_uri_is_pinned_to_the_start_directory(composer, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg, _ = composer("tracking.uri=sqlite:///rel/store.db")
    assert store_uri(cfg) == f"sqlite:///{tmp_path}/rel/store.db"


def test_a_failing_run_is_marked_failed_with_the_reason(composer):
    cfg, _ = composer("tracking.experiment=failing")
    with pytest.raises(RuntimeError):
        with start_run_of(cfg, run_name="boom", tags={}):
            raise RuntimeError("simulated crash")
    _, runs = _runs(store_uri(cfg), "failing")
    assert [r.info.status for r in runs] == ["FAILED"]
    assert runs[0].data.tags["error"] == "RuntimeError: simulated crash"


def test_runs_of_other_hosts_are_judged_by_their_heartbeat(composer):
    """A RUNNING run whose heartbeat is older than tracking.stale_after_s (its node vanished) is
    marked FAILED with the reason by the next run's start; one with a fresh heartbeat is left alone."""
    cfg, _ = composer("tracking.experiment=hosts", "tracking.stale_after_s=60")
    client = MlflowClient(store_uri(cfg))
    experiment = client.create_experiment("hosts")
    now = int(time.time())
    dead, alive = (client.create_run(experiment, tags={"fidelity.host": "node-7", "fidelity.pid": "4242",
                                                       "fidelity.heartbeat": str(beat)}).info.run_id
                   for beat in (now - 600, now - 5))
    with start_run_of(cfg, run_name="next", tags={}):
        pass
    assert client.get_run(alive).info.status == "RUNNING"
    gone = client.get_run(dead)
    assert gone.info.status == "FAILED"
    assert gone.data.tags["error"].startswith("interrupted: no heartbeat from process 4242 on node-7 since ")
    assert "tracking.stale_after_s=60" in gone.data.tags["error"]


def test_a_trial_run_given_up_before_its_job_started_is_not_run(composer):
    cfg, _ = composer("tracking.experiment=given_up")
    client = MlflowClient(store_uri(cfg))
    run_id = client.create_run(client.create_experiment("given_up")).info.run_id
    client.set_tag(run_id, "error", "interrupted: no heartbeat from its sweep process")
    client.set_terminated(run_id, status="KILLED")
    cfg, _ = composer("tracking.experiment=given_up", f"tracking.run_id={run_id}")
    with pytest.raises(UserError, match=f"tracking.run_id={run_id}: that run already ended \\(KILLED: interrupted"):
        with start_run_of(cfg, run_name="late", tags={}):
            raise AssertionError("the job ran")
    assert client.get_run(run_id).info.status == "KILLED"


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning")   # MLflow's pandas calls, in threads
@pytest.mark.parametrize("table", sorted(RACES))
def test_two_trials_writing_one_row_at_once_both_succeed(table, tmp_path):
    """MLflow's SQL store looks a row up, then inserts it when missing (a dataset of the
    experiment, the experiment's description): two parallel trials both miss it and one insert
    fails on the unique key (seen in CI: a trial FAILED). Here on sqlite; on PostgreSQL in
    tests/cluster."""
    race_two_trials(f"sqlite:///{tmp_path}/race.db", table, tmp_path)


def test_a_run_shorter_than_the_sampling_interval_still_has_system_metrics(tmp_path):
    from fidelity_exp.tracking.notebook import system_metrics

    uri = f"sqlite:///{tmp_path}/short.db"
    client = MlflowClient(uri)
    run_id = client.create_run(client.create_experiment("short")).info.run_id
    with system_metrics(run_id, uri, enabled=True):
        time.sleep(0.5)   # far below MLflow's 10 s interval
    metrics = client.get_run(run_id).data.metrics
    assert "system/cpu_utilization_percentage" in metrics and "system/system_memory_usage_megabytes" in metrics


def test_bad_input_creates_no_run(composer, tmp_path):
    cfg, choices = composer("+experiment=quickstart", "pilot.n=5000")
    with pytest.raises(ConfigError, match="pilot.n=5000"):
        pipeline.run(cfg, choices=choices)
    assert not (tmp_path / "mlruns" / "mlflow.db").exists()


def test_same_seed_same_split_different_seed_different_split(composer):
    cfg, choices = composer("+experiment=quickstart")
    study = pipeline.setup_study(cfg.data, choices["data"])
    first = split_of(cfg, study)
    again = split_of(cfg, study)
    assert list(first.pilot) == list(again.pilot)
    cfg2, _ = composer("+experiment=quickstart", "seed=1")
    assert list(split_of(cfg2, study).pilot) != list(first.pilot)


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


def test_llm_arms_end_to_end_on_the_tiny_model(composer, tmp_path):
    """The quickstart's recipe with tiny_random: base and finetuned beside the baselines, training
    loss per step, adapter logged and registered, example interview and twins logged."""
    cfg, choices = composer("+experiment=quickstart", "model=tiny_random", "eval.n=20", "finetune.max_steps=3",
                            *SMALL)
    result = pipeline.run(cfg, choices=choices, output_dir=tmp_path / "out")
    client, runs = _runs(store_uri(cfg), "anes96")
    run = runs[0]
    assert run.info.status == "FINISHED" and run.data.tags["arms"] == "base,finetuned,pilot_resample,tabular"
    for arm in ("base", "finetuned", "pilot_resample", "tabular"):
        assert result[f"{arm}/fidelity_score"] is not None and f"{arm}/fidelity_score" in run.data.metrics
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")] == [1, 2, 3]
    assert run.data.metrics["perf/finetune_tokens_per_s"] > 0 and run.data.metrics["perf/base/simulate_tokens_per_s"] > 0
    logged = {f.path for d in ("adapter", "prompts", "synthetic") for f in client.list_artifacts(run.info.run_id, d)}
    assert {"adapter/adapter_model.safetensors", "prompts/example_interview.txt", "synthetic/base.csv",
            "synthetic/finetuned.csv"} <= logged
    version = client.get_model_version("anes96-tiny_random-lora", "1")
    assert version.run_id == run.info.run_id and run.data.tags["adapter.uri"] == "models:/anes96-tiny_random-lora/1"
    # the version says what it is and how good (#30), its model card is filled (not PEFT's template)
    assert version.description.startswith("study: anes96 v1; base model: tiny_random; pilot humans: ")
    assert run.info.run_id in version.description and "finetuned/fidelity_score = " in version.description
    card = open(client.download_artifacts(run.info.run_id, "adapter/README.md", str(tmp_path))).read()
    assert card.startswith("# anes96-tiny_random-lora") and "**LoRA**: rank" in card
    assert "More Information Needed" not in card
    twins = pd.read_csv(client.download_artifacts(run.info.run_id, "synthetic/finetuned.csv", str(tmp_path)))
    assert len(twins) == 20 and "vote__p__1" in twins.columns

    # sound conclusions: every interval holds its estimate; every headline key of the LLM arms has its
    # tests against the humans and its comparisons with base and each baseline; the verdict is reported
    from fidelity_exp.metrics import registry

    for key, low in result.items():
        if key.endswith("/ci_low") and low is not None:
            stem = key.removesuffix("/ci_low")
            point = result.get(stem, result.get(stem + "/better"))
            assert low <= point <= result[stem + "/ci_high"], key
    headline = registry.headline_keys({k.removeprefix("finetuned/") for k in result if k.startswith("finetuned/")})
    for key in headline:
        if result[f"finetuned/{key}"] is None or registry.key_info(key).swap_invariant:
            continue
        assert result[registry.perm_key(f"finetuned/{key}", "p_value")] is not None, key
        for other in ("base", "pilot_resample", "tabular"):
            assert registry.compare_key("finetuned", other, key, "p_value") in result, (key, other)
    assert run.data.tags["finetuned/tests/design"] == "paired_swap"
    report = client.download_artifacts(run.info.run_id, "report/report.md", str(tmp_path))
    text = open(report).read()
    assert "## Verdict" in text and "finetuned is indistinguishable from the humans on" in text
    # option order (METRICS.md section 12): every LLM arm's position metrics, in the report with their plot
    for arm in ("base", "finetuned"):
        assert result[f"{arm}/position/primacy/mean"] is not None and f"{arm}/position/vote/order_sensitivity" in result
        assert f"{arm}/position/primacy/mean" in run.data.metrics
    assert "pilot_resample/position/primacy/mean" not in result
    assert "## Option order (position)" in text and "finetuned: primacy" in text and "plots/position.png" in text

    # the lab notebook (tracking/notebook.py): description, source, datasets, traces, system metrics
    note = run.data.tags["mlflow.note.content"]
    assert note.startswith("## The answer") and "Fine-tuning" in note[:800]     # did fine-tuning help, first
    assert "## Headline metrics" in note and "| finetuned |" in note and "human split-half" in note
    assert run.data.tags["mlflow.source.name"]     # `python -m fidelity_exp` from the command line
    assert run.data.tags["mlflow.source.type"] == "LOCAL" and "mlflow.user" in run.data.tags
    contexts = {d.dataset.name: [t.value for t in d.tags if t.key == "mlflow.data.context"][0]
                for d in run.inputs.dataset_inputs}
    assert contexts == {"anes96-pilot": "pilot", "anes96-evaluation": "evaluation",
                        **{f"anes96-synthetic-{a}": f"synthetic:{a}" for a in ("base", "finetuned", "pilot_resample",
                                                                                "tabular")}}
    assert "mlflow.note.content" in client.get_experiment(run.info.experiment_id).tags
    traces = client.search_traces(locations=[run.info.experiment_id], max_results=100)
    assert len(traces) == 2 * 20 and {t.info.tags["arm"] for t in traces} == {"base", "finetuned"}
    one = client.get_trace(traces[0].info.trace_id)
    spans = {s.name: s for s in one.data.spans}
    assert set(spec_questions(cfg)) <= set(spans)
    assert "option_probabilities" in spans["vote"].outputs and "Who do you expect" in spans["vote"].inputs["question"]
    assessments = {a.name for a in one.info.assessments}
    assert {f"{kind}/{q}" for kind in ("human", "match") for q in spec_questions(cfg)} == assessments
    assert any(k.startswith("system/cpu") for k in run.data.metrics) and run.data.metrics["timing/traces_s"] > 0
    assert (tmp_path / "out" / "report" / "report.html").is_file()
    undeclared = [k for k in [*run.data.metrics, *result] if not registry.declared(k)]
    assert not undeclared, f"{len(undeclared)} keys written but not declared in metrics/registry.py: {undeclared[:10]}"

    # the registered adapter drives a later run's finetuned arm without training
    cfg2, choices2 = composer("+experiment=quickstart", "model=tiny_random", "eval.n=20", "finetune=registered",
                              "finetune.uri=models:/anes96-tiny_random-lora/1", *SMALL)
    again = pipeline.run(cfg2, choices=choices2, output_dir=tmp_path / "out2")
    assert again["finetuned/divergence/js/mean"] == pytest.approx(result["finetuned/divergence/js/mean"])


def spec_questions(cfg) -> list[str]:
    return [q["column"] for q in cfg.data.questions]


def test_tracking_changes_no_metric(composer, tmp_path):
    """Traces, datasets, the description and system metrics only record: metrics.json is the same
    byte for byte with tracking on and off."""
    args = ("+experiment=quickstart", "model=tiny_random", "eval.n=20", "finetune.max_steps=2", *SMALL)
    on, on_choices = composer(*args)
    off, off_choices = composer(*args, "tracking.enabled=false")
    pipeline.run(on, choices=on_choices, output_dir=tmp_path / "on")
    pipeline.run(off, choices=off_choices, output_dir=tmp_path / "off")
    assert (tmp_path / "on" / "metrics.json").read_bytes() == (tmp_path / "off" / "metrics.json").read_bytes()


def test_finetune_none_runs_the_base_model_alone(composer, tmp_path):
    cfg, choices = composer("+experiment=quickstart", "model=tiny_random", "eval.n=10", "finetune=none",
                            "arms=[base,finetuned]", *SMALL)
    assert pipeline.plan(cfg, choices).arm_names == ["base"]
    result = pipeline.run(cfg, choices=choices, output_dir=tmp_path / "out")
    assert "base/fidelity_score" in result and not any(k.startswith("finetuned/") for k in result)


def test_artifacts_are_written_atomically(tmp_path, monkeypatch):
    """Every artifact reaches its name by a rename from a temporary name in the same folder."""
    import os

    import fidelity_exp.tracking.mlflow_run as mlflow_run
    from fidelity_exp.tracking.mlflow_run import TrackedRun

    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    exp = client.create_experiment("atomic", artifact_location=(tmp_path / "artifacts").as_uri())
    run = client.create_run(exp)
    renames: list[tuple[str, str]] = []
    real_replace = os.replace

    def recording_replace(src, dst):   # the real rename; the pair is kept to inspect
        renames.append((str(src), str(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(mlflow_run.os, "replace", recording_replace)
    tracked = TrackedRun(client, run.info.run_id)
    tracked.log_text("a,b\n1,2\n", "tables/x.csv")
    folder = tmp_path / "report"
    (folder / "plots").mkdir(parents=True)
    (folder / "report.md").write_text("# r")
    (folder / "plots" / "p.png").write_bytes(b"\x89PNG")
    tracked.log_dir(folder, "report")
    tracked.log_file(folder / "report.md")

    logged = {f.path for d in ("tables", "report", "report/plots") for f in client.list_artifacts(run.info.run_id, d)}
    assert {"tables/x.csv", "report/report.md", "report/plots/p.png"} <= logged
    root = tmp_path / "artifacts" / run.info.run_id / "artifacts"
    targets = {str(root / p) for p in ("tables/x.csv", "report/report.md", "report/plots/p.png", "report.md")}
    assert {dst for _, dst in renames} == targets
    for src, dst in renames:
        assert os.path.dirname(src) == os.path.dirname(dst) and os.path.basename(src).endswith(".partial")
    assert not list(root.rglob("*.partial"))
    assert (root / "tables" / "x.csv").read_text() == "a,b\n1,2\n"
