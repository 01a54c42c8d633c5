"""Twins identical to their humans, scored through the real command line (evaluate-only) on
several studies: every key with a declared identity value has it (0 for every distance, 1 for
every ratio, ...), and no interval excludes its point. A twins file whose rows end with a stray
delimiter is refused, never scored shifted by a column."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest

from fidelity_exp.metrics.registry import bare_key, interval_keys, unprefixed_info

from ..conftest import tiny_frame
from ..command import cli
from .test_bad_input import _study

FAST = ("metrics.bootstrap=20", "metrics.permutations=20", "metrics.reference_splits=2", "tracking.enabled=false")


def _humans(study: str) -> pd.DataFrame:
    if study == "anes96":
        import statsmodels.datasets as smd

        return smd.anes96.load_pandas().data.reset_index(drop=True).rename_axis("twin_of").reset_index()
    from fidelity_exp.study.synthetic import GENERATORS

    return GENERATORS["disclosure"](n=929, seed=0).rename(columns={"respondent_id": "twin_of"})


def _run(folder: Path, args: list[str], twins: pd.DataFrame) -> dict:
    twins.to_csv(folder / "twins.csv", index=False)
    done = cli(*args, "+experiment=evaluate", "evaluate.synthetic=twins.csv", "hydra.run.dir=out", *FAST, cwd=folder)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((folder / "out" / "metrics.json").read_text())


@pytest.mark.parametrize("study", ["tiny", "anes96", "disclosure"])
def test_identical_twins_score_as_identical(study, tmp_path):
    if study == "tiny":
        args = _study(tmp_path)[:2]
        twins = tiny_frame().rename(columns={"rid": "twin_of"})
    else:
        args, twins = [f"data={study}"], _humans(study)
    metrics = _run(tmp_path, args, twins)
    checked = 0
    for key, value in metrics.items():
        if value is None or not key.startswith("synthetic/") or bare_key(key) != key:
            continue
        info = unprefixed_info(key.removeprefix("synthetic/"))
        if info is None:
            continue
        if info.identical is not None:
            assert math.isclose(value, info.identical, abs_tol=1e-9), f"{study}: {key} = {value}, not {info.identical}"
            checked += 1
        low, high = interval_keys(key)
        if metrics.get(low) is not None and metrics.get(high) is not None:
            assert metrics[low] - 1e-12 <= value <= metrics[high] + 1e-12, f"{study}: {key} outside its interval"
    assert checked >= 20, f"{study}: only {checked} keys with an identity value"
    assert metrics["synthetic/fidelity_score"] == 0.0
    assert metrics["synthetic/tests/distinguishable/share"] == 0.0


def test_identical_twins_with_trailing_delimiters_are_refused(tmp_path):
    args = _study(tmp_path)[:2]
    lines = tiny_frame().rename(columns={"rid": "twin_of"}).to_csv(index=False).splitlines()
    (tmp_path / "twins.csv").write_text("\n".join([lines[0]] + [line + "," for line in lines[1:]]) + "\n")
    done = cli(*args, "+experiment=evaluate", "evaluate.synthetic=twins.csv", *FAST, cwd=tmp_path)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "line 2 has 6 fields but the header has 5" in done.stderr
