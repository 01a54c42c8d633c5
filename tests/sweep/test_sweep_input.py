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
