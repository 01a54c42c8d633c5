"""Bad sweep input through the command line's entry point (in this process: tests/command.py):
one message naming the key and value, no traceback, and neither store written. (Sweeps that run:
tests/sweep/test_sweep.py.)"""

from __future__ import annotations

import pytest

from ..command import main


@pytest.mark.parametrize("args,message", [
    (["+sweep=pilot_size", "pilot.n=choice(50,5000)"], "pilot.n=5000: expected an integer from 1 to 744"),
    (["+sweep=lora", "hydra.sweeper.objective=base/fidelity_score"], "objective='base/fidelity_score'"),
    (["+sweep=lora", "hydra.sweeper.objective=finetuned/nonsense"], "objective='finetuned/nonsense'"),
    (["+sweep=lora", "hydra.sweeper.sampler=grid"], "needs choice(...) or range(...)"),
    (["+sweep=lora", "hydra.sweeper.n_trials=0"], "hydra.sweeper.n_trials=0"),
    (["+sweep=lora", "validation.n=0"], "score_on='validation': needs validation humans"),
    (["+sweep=lora", "simulate.option_order=choice(fixed,sideways)"], "simulate.option_order='sideways'"),
    (["+sweep=lora", "finetune.lora.rank=choice(4,0)"], "finetune.lora.rank=0: expected an integer from 1"),
    (["+sweep=lora", "hydra.sweeper.grace_period=10"], "hydra.sweeper.grace_period=10: expected more than "
                                                       "hydra.sweeper.heartbeat_interval (10)"),
    (["+sweep=lora", "hydra.sweeper.max_retry=-1"], "hydra.sweeper.max_retry=-1: expected a number of retries"),
    (["+sweep=lora", "tracking.stale_after_s=30"], "tracking.stale_after_s=30: expected more than tracking.heartbeat_s"),
    (["+sweep=lora", "finetune.learning_rate=interval(0.5,0.1)"],
     "finetune.learning_rate='interval(0.5,0.1)': expected interval(low, high) with low <= high"),
    (["+sweep=pilot_size", "pilot.n=range(20,10)"], "pilot.n='range(20,10)': expected at least one value"),
])
def test_bad_sweep_input_is_one_message_and_writes_nothing(tmp_path, args, message):
    done = main("-m", "+experiment=quickstart", "model=tiny_random", *args, cwd=tmp_path)
    assert done.returncode == 2, done.stderr[-2000:]
    assert message in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "mlruns" / "mlflow.db").exists() and not (tmp_path / "mlruns" / "optuna.db").exists()


SMALL = ("arms=[tabular]", "hydra.sweeper.objective=tabular/fidelity_score", "hydra.sweeper.n_trials=1",
         "metrics.bootstrap=0", "metrics.permutations=0", "metrics.reference_splits=0", "tracking.enabled=false")


def _studies(folder) -> dict[str, int]:
    import optuna

    storage = f"sqlite:///{folder / 'mlruns' / 'optuna.db'}"
    return {s.study_name: s.n_trials for s in optuna.get_all_study_summaries(storage)}


def test_a_sweep_whose_params_come_only_from_the_command_line_runs(tmp_path):
    """No sweeps/ file: the sweeper and its one param named on the command line (a ValueError from
    OmegaConf before)."""
    done = main("-m", "+experiment=quickstart", "hydra/sweeper=fidelity_optuna", "pilot.n=choice(40,50)", *SMALL,
                cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert list(_studies(tmp_path).values()) == [1]


def _experiment(folder, min_group_size: int) -> str:
    """The user's own experiment file (their conf folder), which they edit between two sweeps."""
    conf = folder / "my_conf" / "experiment"
    conf.mkdir(parents=True, exist_ok=True)
    (conf / "mine.yaml").write_text("# @package _global_\ndefaults:\n  - quickstart\n\n"
                                    f"metrics:\n  min_group_size: {min_group_size}\n")
    return f"hydra.searchpath=[file://{folder / 'my_conf'}]"


def test_an_edited_experiment_is_another_study_and_never_resumes_an_old_one(tmp_path):
    args = ("+experiment=mine", "hydra/sweeper=fidelity_optuna", "pilot.n=choice(40,50)", *SMALL)
    done = main("-m", _experiment(tmp_path, 10), *args, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    (first,) = _studies(tmp_path)
    # the same settings: resumed
    done = main("-m", _experiment(tmp_path, 10), *args, "hydra.sweeper.n_trials=2", cwd=tmp_path)
    assert done.returncode == 0 and _studies(tmp_path) == {first: 2}, done.stderr[-3000:]
    done = main("-m", _experiment(tmp_path, 15), *args, cwd=tmp_path)    # edited: the default name follows the settings
    assert done.returncode == 0, done.stderr[-3000:]
    studies = _studies(tmp_path)
    assert len(studies) == 2 and studies[first] == 2
    done = main("-m", _experiment(tmp_path, 20), *args, f"hydra.sweeper.study_name={first}", cwd=tmp_path)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert f"study {first!r}" in done.stderr and "metrics.min_group_size: 10 -> 20" in done.stderr
    assert _studies(tmp_path)[first] == 2
