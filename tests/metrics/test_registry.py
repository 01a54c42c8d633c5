"""The registry owns the metric keys: no key is spelled outside its family's module (a scan of
src/), and a family registered at run time reaches metrics.json (with intervals and the human
reference), the report and the score without touching any other module."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest

from fidelity_exp import pipeline
from fidelity_exp.metrics import registry
from fidelity_exp.metrics.registry import HIGHER, Component, FamilyResult, KeyInfo

from ..conftest import REPO

SRC = REPO / "src" / "fidelity_exp"
# A key's leading part -> the modules (relative to src/fidelity_exp) that may spell it.
OWNERS = {
    "divergence": {"metrics/divergence.py"},
    "heterogeneity": {"metrics/heterogeneity.py"},
    "subgroup": {"metrics/subgroup.py"},
    "within_group": {"metrics/subgroup.py"},
    "coherence": {"metrics/coherence.py"},
    "regression": {"metrics/regression.py", "inference/regressions.py"},
    "individual": {"metrics/individual.py"},
    "fidelity_score": {"metrics/score.py"},
    "position": {"metrics/position.py"},
    "reference/human_split": set(),
    "ci_low": {"inference/regressions.py"},
    "ci_high": {"inference/regressions.py"},
    "ppi": {"inference/regressions.py"},
    "pilot_only": {"inference/regressions.py"},
    "synthetic_only": {"inference/regressions.py"},
    "truth": {"inference/regressions.py"},
    "tests": set(),
    "compare": set(),
    "perm": set(),
}
ALWAYS = {"metrics/registry.py"}
KEY = re.compile(r"(?:^|/)(divergence|heterogeneity|subgroup|within_group|coherence|regression|individual|ppi|"
                 r"pilot_only|synthetic_only|truth|tests|compare|position)/|(fidelity_score)|(reference/human_split)|"
                 r"/(ci_low|ci_high)\b|/(perm)/")


def _docstrings(tree: ast.AST) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                ids.add(id(first.value))
    return ids


def spelled_keys(path: Path) -> list[tuple[int, str, str]]:
    """(line, owner, text) of every string piece in `path` that spells a metric key (docstrings aside)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skip = _docstrings(tree)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip:
            for m in KEY.finditer(node.value):
                owner = next(g for g in m.groups() if g)
                found.append((node.lineno, owner, node.value))
    return found


def test_no_metric_key_is_spelled_outside_its_family_module():
    offences = []
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC).as_posix()
        for line, owner, text in spelled_keys(path):
            if rel not in OWNERS[owner] | ALWAYS:
                offences.append(f"{rel}:{line}: {text!r} ({owner} keys belong to {sorted(OWNERS[owner]) or 'the registry'})")
    assert not offences, "\n".join(offences)


def test_the_scan_finds_a_spelled_key(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text('"""Docs may say divergence/js/mean."""\nx = f"{arm}/divergence/js/mean"\ny = "fidelity_score"\n')
    assert sorted((line, owner) for line, owner, _ in spelled_keys(bad)) == [(2, "divergence"), (3, "fidelity_score")]


def test_every_declared_key_has_a_role_and_aggregates_have_directions():
    for family in registry.FAMILIES.values():
        for info in family.keys:
            if info.headline:
                assert info.aggregate and info.better is not None, info.pattern
    assert registry.is_aggregate("divergence/js/mean") and not registry.is_aggregate("divergence/js/vote")
    assert registry.headline_keys(["divergence/js/vote", "divergence/js/mean", "fidelity_score"]) == [
        "fidelity_score", "divergence/js/mean"]


@pytest.fixture
def answered_share():
    """A throwaway family: the share of questions the synthetic respondents answered."""

    @registry.register(
        "answered", KeyInfo("answered/share/mean", better=HIGHER, bounds=(0, 1), identical=1.0, aggregate=True,
                            headline=True),
        components=[Component("answered/share", "answered/share/mean", lambda v: 1 - v, default=False)])
    def answered(h, hi, s, si, ctx) -> FamilyResult:
        return FamilyResult({"answered/share/mean": (s.codes[si] >= 0).mean(axis=(1, 2))})

    yield "answered"
    registry.unregister("answered")
    assert "answered" not in registry.FAMILIES and registry.key_info("x/answered/share/mean") is None


def test_a_family_registered_at_run_time_reaches_metrics_json_and_the_report(composer, tmp_path, answered_share):
    cfg, choices = composer("data=disclosure", "pilot.n=100", "eval.n=80", "arms=[pilot_resample]",
                            "metrics.bootstrap=20", "metrics.reference_splits=4",
                            "metrics.score_components=[divergence/js/mean,answered/share]")
    metrics = pipeline.run(cfg, choices=choices, output_dir=tmp_path / "out")
    written = json.loads((tmp_path / "out" / "metrics.json").read_text())
    key = "pilot_resample/answered/share/mean"
    assert written[key] == 1.0 and written[f"{key}/ci_low"] == 1.0 and written[f"{key}/ci_high"] == 1.0
    assert written["reference/human_split/answered/share/mean"] == pytest.approx(1.0)
    # the score took the new component (1 - share = 0) beside divergence
    assert metrics["pilot_resample/fidelity_score"] == pytest.approx(metrics["pilot_resample/divergence/js/mean"] / 2)
    from mlflow.tracking import MlflowClient

    from ..conftest import store_uri

    client = MlflowClient(store_uri(cfg))
    run = client.search_runs([client.get_experiment_by_name("disclosure").experiment_id])[0]
    report = Path(client.download_artifacts(run.info.run_id, "report/report.md", str(tmp_path)))
    row = next(line for line in report.read_text().splitlines() if line.startswith("| answered/share/mean"))
    assert "1.000 [1.000, 1.000]" in row and "higher better" in row

