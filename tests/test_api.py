"""The public Python API: README's example runs as written; the command line's evaluate-only path
and `fx.score` on the same files give identical metrics; the API's defaults are the CLI's."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

import fidelity_exp as fx
from fidelity_exp.errors import UserError
from fidelity_exp.metrics import Options

from .conftest import CONF, REPO
from .command import cli


def readme_example() -> str:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    return re.search(r"### Python API.*?```python\n(.*?)```", text, re.S).group(1)


def test_the_readme_example_runs(tmp_path):
    (tmp_path / "conf").symlink_to(CONF)       # the example runs from the repository root
    done = subprocess.run([sys.executable, "-c", readme_example()], cwd=tmp_path, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    js = float(done.stdout.splitlines()[0])
    assert 0 < js < 0.2                            # two halves of one survey: close, not identical
    assert (tmp_path / "api_report" / "report.html").is_file()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """anes96 humans (300) and, as a synthetic file, 300 other respondents' answers given their
    personas and paired with them."""
    from fidelity_exp.study.synthetic_file import as_file_frame

    folder = tmp_path_factory.mktemp("files")
    study = fx.load_study(CONF / "data" / "anes96.yaml")
    people = study.frame.reset_index(drop=True)
    humans = as_file_frame(study.spec, people.iloc[:300].reset_index(drop=True))
    twins = as_file_frame(study.spec, people.iloc[300:600].reset_index(drop=True))
    twins[study.spec.given_columns] = humans[study.spec.given_columns]   # paired twins: their humans' personas
    twins.insert(0, "twin_of", np.arange(300))
    humans.to_csv(folder / "humans.csv", index=False)
    twins.to_csv(folder / "twins.csv", index=False)
    return folder


def test_cli_evaluate_only_and_the_api_give_identical_metrics(files, tmp_path):
    done = cli("+experiment=evaluate", "data=anes96", f"evaluate.synthetic={files / 'twins.csv'}",
               f"evaluate.human={files / 'humans.csv'}", "evaluate.arm=other", "metrics.bootstrap=30",
               "metrics.reference_splits=4", "metrics.permutations=25", "seed=5", f"hydra.run.dir={tmp_path / 'run'}",
               cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    from_cli = json.loads((tmp_path / "run" / "metrics.json").read_text())
    study = fx.load_study(CONF / "data" / "anes96.yaml")
    scores = fx.score(study.spec, {"other": files / "twins.csv"}, human=files / "humans.csv", bootstrap=30,
                      reference_splits=4, permutations=25, seed=5)
    assert json.loads(json.dumps(scores.metrics)) == from_cli      # every key, bit for bit
    assert from_cli["other/divergence/js/mean/ci_low"] is not None
    # a user's file gets the tests against the humans: paired by twin_of, by label permutation without it
    assert from_cli["other/divergence/js/mean/perm/q_value"] is not None
    assert scores.notes["other/tests/design"] == "paired_swap"
    unpaired = pd.read_csv(files / "twins.csv").drop(columns=["twin_of"])
    pooled = fx.score(study.spec, {"other": unpaired}, human=files / "humans.csv", bootstrap=0, reference_splits=0,
                      permutations=25)
    assert pooled.notes["other/tests/design"] == "label_permutation"
    assert pooled.metrics["other/divergence/js/mean/perm/p_value"] is not None


def test_the_api_defaults_are_the_command_lines(composer):
    cfg, _ = composer()
    assert Options.from_config(cfg.metrics) == Options(seed=int(cfg.seed))


def test_table_report_and_mlflow_logging(files, tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    study = fx.load_study(CONF / "data" / "anes96.yaml")
    humans = pd.read_csv(files / "humans.csv")
    twins = pd.read_csv(files / "twins.csv")
    scores = fx.score(study.spec, twins, human=humans, bootstrap=10, reference_splits=2)
    table = scores.table()
    row = table[(table.arm == "synthetic") & (table.key == "divergence/js/mean")].iloc[0]
    assert row.value == scores.metrics["synthetic/divergence/js/mean"] and row.role == "aggregate"
    assert row.ci_low <= row.value <= row.ci_high and row.better == "lower better"
    assert row.human_split == scores.metrics["reference/human_split/divergence/js/mean"]
    assert set(table.role) == {"aggregate", "item"}
    paths = scores.write_report(tmp_path / "report")
    assert "divergence/js/mean" in (tmp_path / "report" / "report.md").read_text() and all(p.exists() for p in paths)

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run_id = scores.log_to_mlflow(experiment="api-test", tracking_uri=uri)
    run = MlflowClient(uri).get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.metrics["synthetic/divergence/js/mean"] == pytest.approx(row.value)
    artifacts = {f.path for f in MlflowClient(uri).list_artifacts(run_id)}
    assert {"metrics.json", "report", "synthetic"} <= artifacts


def test_bad_input_through_the_api_is_a_user_error_naming_the_column(files):
    study = fx.load_study(CONF / "data" / "anes96.yaml")
    twins = pd.read_csv(files / "twins.csv").drop(columns=["vote"])
    with pytest.raises(UserError, match="vote"):
        fx.score(study.spec, twins, human=files / "humans.csv")
    with pytest.raises(UserError, match="metrics.families='vibes'"):
        fx.score(study, files / "twins.csv", families=("vibes",))
    with pytest.raises(UserError, match="metrics.permutations=5: expected 0 .no tests. or at least 19"):
        fx.score(study, files / "twins.csv", permutations=5)
    with pytest.raises(UserError, match="metrics.bootstrap=1000000000: expected at most .* GiB"):
        fx.score(study, files / "twins.csv", bootstrap=10**9)


def test_the_api_refuses_what_the_command_line_refuses(files):
    """Arm names follow the command line's rules (a reserved word would overwrite the human
    reference; `gpt` and `gpt/t1` would mix in the table), and only frames or files are data."""
    study = fx.load_study(CONF / "data" / "anes96.yaml")
    twins = pd.read_csv(files / "twins.csv")
    with pytest.raises(UserError, match="'reference'"):
        fx.score(study, {"reference": twins}, bootstrap=0)
    with pytest.raises(UserError, match="'gpt/t1'"):
        fx.score(study, {"gpt": twins, "gpt/t1": twins}, bootstrap=0)
    with pytest.raises(TypeError, match="empty mapping"):
        fx.score(study, {})
    with pytest.raises(TypeError, match="synthetic is a list.*DataFrame"):
        fx.score(study, twins.to_dict("records"))
    with pytest.raises(TypeError, match=r"synthetic\['gpt'\] is a ndarray"):
        fx.score(study, {"gpt": twins.to_numpy()})
    with pytest.raises(TypeError, match="human is a list"):
        fx.score(study.spec, twins, human=twins.to_dict("records"))
