"""Failures late in a run lose as little as possible: a regression that cannot be fitted becomes
undefined keys with the true reason, the other metrics are still there, and numerical libraries
say nothing on the console. Ids are text: '007' and '7' are two respondents, and logged ids keep
their zeros."""

from __future__ import annotations

import json

import pandas as pd

from fidelity_exp.study.spec import parse_spec

from ..conftest import tiny_frame
from ..command import cli
from .store import query
from .test_bad_input import _study


def test_an_unfittable_regression_is_undefined_with_its_reason(tmp_path):
    regressions = {"logged": {"formula": "buy ~ np.log(age - age) + trust", "family": "logit"},
                   "fine": {"formula": "buy ~ trust + age", "family": "logit"}}
    done = cli(*_study(tmp_path, regressions=regressions), "hydra.run.dir=out", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert not any(word in done.stderr for word in ("LAPACK", "DLASCL", "RuntimeWarning", "Traceback")), done.stderr
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["tabular/regression/logged/sign_f1"] is None
    assert metrics["tabular/divergence/js/mean"] is not None
    assert any(v is not None for k, v in metrics.items() if k.startswith("tabular/regression/fine/"))
    tags = dict(query(tmp_path / "mlruns" / "mlflow.db", "select key, value from tags"))
    assert "non-finite values" in tags["tabular/regression/logged/error/human"]
    assert "np.log(age - age)" in tags["tabular/regression/logged/error/human"]


def test_ids_are_text(tmp_path):
    frame = tiny_frame()
    frame["rid"] = [f"{i:03d}" for i in range(len(frame))]
    frame.loc[1, "rid"] = "7"                    # '007' and '7' both present: two respondents
    done = cli(*_study(tmp_path, frame=frame), "hydra.run.dir=out", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    artifacts = next((tmp_path / "mlruns" / "artifacts").rglob("split"))
    logged = pd.concat([pd.read_csv(artifacts / f, dtype=str) for f in ("pilot_ids.csv", "evaluation_ids.csv")])
    assert sorted(logged["id"]) == sorted(frame["rid"])


def test_reserved_and_colliding_names_are_found_in_every_namespace():
    from fidelity_exp.study.spec import check_spec
    from ..conftest import tiny_spec

    spec = tiny_spec("x.csv", regressions={"ppi": {"formula": "buy ~ trust", "family": "logit"}})
    spec["subgroups"] = {"region": {"column": "region", "groups": {"compare": ["n"], "South": ["s"]}}}
    problems = {p.key for p in check_spec(spec)[1]}
    assert problems == {"regressions.ppi", "subgroups.region.groups.compare"}
    assert parse_spec(tiny_spec("x.csv"))   # the tiny spec itself is fine
