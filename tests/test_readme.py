"""Every `python -m fidelity_exp` command shown in the README's code blocks runs, so that the
examples cannot rot: through the command line's entry point (tests/command.py), in a tmp folder
holding the files the examples name (my_conf/, twins.csv, ...), with tiny overrides for the keys
the example leaves to its experiment (model=tiny_random, a few steps, few twins and replicates).
Sweeps (-m) run in the slow lane, their grids narrowed to one point on the command line. Examples
for 7-8B models only compose (`--cfg job`: this machine cannot run them); the SLURM ones run in
tests/cluster."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import statsmodels.datasets as smd
import yaml

from .command import main
from .conftest import REPO, tiny_frame, tiny_spec

TINY = {"model": "tiny_random", "finetune.max_steps": "2", "metrics.bootstrap": "5", "metrics.reference_splits": "2",
        "metrics.permutations": "0", "simulate.position_twins": "5", "eval.n": "30"}
# a sweep's grid narrowed to one point (the example's other settings as written)
ONE_POINT = {"+sweep=pilot_size": ["pilot.n=choice(25)", "seed=choice(0)"],
             "+sweep=ppi_budget": ["pilot.finetune_fraction=choice(0.5)", "pilot.n=choice(100)", "seed=choice(0)"],
             "+experiment=ppi_coverage": ["seed=choice(0)"], "+sweep=lora": ["hydra.sweeper.n_trials=1"]}
ONLY_COMPOSED = ("qwen2_5_7b_instruct", "llama3_1_8b_instruct")     # 7-8B presets: --cfg job only
HEAVY = ("eval.n=300", "pilot.crossfit_folds=5", "pilot.finetune_fraction=0.5",   # 300 twins, 5 or 2 fine-tunes,
         "arms.served.base_url=")                                               # a served arm: slow lane
SERVED = re.compile(r"arms\.served\.base_url=\S+")   # pointed at llama.cpp's server (tests/conftest.py)
ELSEWHERE = {"hydra/launcher=slurm": "tests/cluster runs the SLURM sweep on the local cluster"}


def readme_commands() -> list[str]:
    """The `python -m fidelity_exp ...` lines of the README's bash blocks (continuations joined,
    comments dropped)."""
    text = (REPO / "README.md").read_text()
    commands = []
    for block in re.findall(r"```(?:bash|sh)\n(.*?)```", text, re.S):
        lines = block.splitlines()
        i = 0
        while i < len(lines):
            line = lines[i].strip()
            while line.endswith("\\") and i + 1 < len(lines):
                i += 1
                line = line[:-1].rstrip() + " " + lines[i].strip()
            if line.startswith("python -m fidelity_exp ") or line == "python -m fidelity_exp":
                commands.append(line.split(" #", 1)[0].strip())
            i += 1
    return commands


COMMANDS = readme_commands()


def _argv(command: str, folder: Path) -> list[str]:
    args = shlex.split(command.replace("$PWD", str(folder)))[3:]
    if any(model in command for model in ONLY_COMPOSED):
        return [*args, "--cfg", "job"]
    if "--help" in args or "--cfg" in args:
        return args
    given = {a.split("=", 1)[0].lstrip("+~") for a in args if "=" in a}
    extra = [f"{k}={v}" for k, v in TINY.items() if k not in given]
    for marker, narrowed in ONE_POINT.items():
        if marker in args:
            extra += narrowed
    return [*args, *extra]


def _user_files(folder: Path) -> None:
    """What the examples name: my_conf/ (data/my_survey.yaml, experiment/my_study.yaml), a twins
    file of anes96 respondents, and my_survey's twins and held-out humans."""
    conf = folder / "my_conf"
    (conf / "data").mkdir(parents=True)
    (conf / "experiment").mkdir()
    tiny_frame(240).to_csv(folder / "my_survey.csv", index=False)
    (conf / "data" / "my_survey.yaml").write_text(
        yaml.safe_dump(tiny_spec(folder / "my_survey.csv", name="my_survey"), sort_keys=False))
    (conf / "experiment" / "my_study.yaml").write_text(
        "# @package _global_\ndefaults:\n  - override /data: my_survey\n  - override /arms: [pilot_resample, tabular]\n"
        "pilot:\n  n: 60\n")
    anes = smd.anes96.load_pandas().data.reset_index(drop=True).rename_axis("twin_of").reset_index()
    anes.to_csv(folder / "twins.csv", index=False)                       # twins identical to their humans
    holdout = tiny_frame(60)
    holdout.to_csv(folder / "holdout.csv", index=False)
    holdout.rename(columns={"rid": "twin_of"}).to_parquet(folder / "twins.parquet", index=False)


def _case(command: str):
    sweep = "-m" in command.split()[3:]
    marks = [pytest.mark.slow] if sweep or any(h in command for h in HEAVY) else []
    reason = next((why for marker, why in ELSEWHERE.items() if marker in command), None)
    if reason:
        marks.append(pytest.mark.skip(reason=reason))
    return pytest.param(command, marks=marks, id=command.removeprefix("python -m fidelity_exp").strip()[:80] or "bare")


def test_the_readme_shows_commands():
    assert len(COMMANDS) >= 20 and any("-m" in c.split()[3:] for c in COMMANDS)
    assert sum(any(m in c for m in ELSEWHERE) for c in COMMANDS) <= 2    # only the SLURM examples run elsewhere


@pytest.mark.parametrize("command", [_case(c) for c in COMMANDS])
def test_every_readme_command_runs(command, tmp_path, request):
    _user_files(tmp_path)
    if SERVED.search(command):
        command = SERVED.sub(f"arms.served.base_url={request.getfixturevalue('llama_server')}", command)
    done = main(*_argv(command, tmp_path), cwd=tmp_path)
    assert done.returncode == 0, f"{command}\n{done.stderr[-3000:]}"
    assert "Traceback" not in done.stderr
