"""Rectified estimates inside a run: the pilot split into fine-tuning and rectification humans,
the three estimators logged per term, and valid coverage with a tiny fine-tuned model on the
disclosure study."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from fidelity_exp import pipeline
from fidelity_exp.arms import ArmContext
from fidelity_exp.arms.llm import Finetuned, LLMSession, LLMSettings
from fidelity_exp.errors import ConfigError
from fidelity_exp.inference.regressions import TwinSets, rectified_regressions
from fidelity_exp.pipeline import check_config
from fidelity_exp.study import Split


from ..conftest import split_of

TINY = ["+experiment=disclosure", "model=tiny_random", "finetune.max_steps=2", "metrics.bootstrap=10",
        "metrics.reference_splits=2", "arms=[finetuned]", "tracking.enabled=false"]


def test_folds_partition_the_pilot(composer):
    cfg, choices = composer(*TINY, "pilot.finetune_fraction=0.6")
    study = pipeline.setup_study(cfg.data, choices["data"])
    split = split_of(cfg, study)
    (fold,) = split.folds
    assert len(fold) == 40 and set(fold) <= set(split.pilot)
    assert len(split.finetune_ids(0)) == 60 and not set(split.finetune_ids(0)) & set(fold)
    assert not set(fold) & set(split.evaluation)
    cfg, _ = composer(*TINY, "pilot.crossfit_folds=3")
    folds = split_of(cfg, study).folds
    assert [len(f) for f in folds] == [34, 33, 33]
    assert set().union(*map(set, folds)) == set(split.pilot) and sum(map(len, folds)) == 100


@pytest.mark.parametrize("override,message", [
    ("pilot.finetune_fraction=0", r"pilot.finetune_fraction=0"),
    ("pilot.finetune_fraction=1.5", r"in \(0, 1\]"),
    ("pilot.finetune_fraction=0.99", r"leaves 99 of 100 pilot humans to fine-tune and 1 to rectify"),
    ("pilot.crossfit_folds=80", r"pilot.crossfit_folds=80: expected an integer from 1"),
])
def test_bad_rectification_settings(composer, override, message):
    cfg, choices = composer(*TINY, override)
    study = pipeline.setup_study(cfg.data, choices["data"])
    with pytest.raises(ConfigError, match=message):
        split_of(cfg, study)


def test_rectification_needs_the_finetuned_arm(composer):
    cfg, choices = composer(*TINY, "pilot.finetune_fraction=0.5", "arms=[base]")
    with pytest.raises(ConfigError, match="rectified estimates need the finetuned arm"):
        pipeline.plan(cfg, choices)


def test_a_rectified_run_logs_all_three_estimators(composer):
    cfg, choices = composer(*TINY, "pilot.finetune_fraction=0.5", "eval.n=120")
    metrics = pipeline.run(cfg, choices=choices)
    terms = ["Intercept", "C_gender__T.male_", "purpose", "assurance", "sensitive", "concern", "trust", "benefit",
             "age"]
    for est in ("ppi", "pilot_only", "synthetic_only"):
        for t in terms:
            low, coef, high = (metrics[f"{est}/regression/disclosure/{t}/{k}"] for k in ("ci_low", "coef", "ci_high"))
            assert low <= coef <= high, (est, t)
    assert all(f"truth/regression/disclosure/{t}/coef" in metrics for t in terms)
    assert 0 <= metrics["ppi/regression/disclosure/lambda"] <= 1
    assert metrics["ppi/regression/disclosure/n_rectify"] == 50
    assert metrics["ppi/regression/disclosure/n_unlabelled"] == 120
    assert metrics["pilot_only/regression/disclosure/n"] == 100
    assert metrics["ppi/regression/disclosure/effective_n/median"] > 0
    assert "finetuned/fidelity_score" in metrics
    from fidelity_exp.metrics.registry import declared
    assert all(declared(k) for k in metrics), [k for k in metrics if not declared(k)]


@pytest.mark.slow
def test_tiny_model_coverage_on_the_disclosure_study(composer):
    """A tiny model fine-tuned on 40 humans answers as twins of a 2,400-respondent disclosure
    population; 200 times, 120 labelled humans and 600 unlabelled personas are drawn from it and
    every coefficient's PPI interval is checked against the fit on the whole population (the
    estimand of draws from it). 200 draws: a 95% interval's coverage has a Monte-Carlo SE of
    1.5 points; with 9 terms a per-term floor of 0.88 (about 4.5 SE) fails only when intervals are
    truly too narrow, and the mean over terms must be within 3 points of 95%."""
    cfg, choices = composer("+experiment=disclosure", "model=tiny_random", "finetune.max_steps=3",
                            "data.source.n=2400", "tracking.enabled=false")
    study = pipeline.setup_study(cfg.data, choices["data"])
    ids = study.ids
    train, pool = ids[:40], ids[40:]
    settings = LLMSettings.of(check_config(cfg))
    ctx = ArmContext(study, Split(pilot=train, evaluation=pool), seed=int(cfg.simulate.seed),
                     make_llm=lambda c: LLMSession(settings, c))
    twins = Finetuned().simulate(ctx).frame.set_index("twin_of", drop=False)
    population = study.frame.loc[pool]
    rng = np.random.default_rng(5)
    hits, width_ratio = [], []
    for _ in range(200):
        draw = rng.permutation(len(pool))
        lab, unl = pool[draw[:120]], pool[draw[120:720]]
        out, _ = rectified_regressions(study.spec, population, study.frame.loc[lab], study.frame.loc[lab],
                                       TwinSets(labelled=twins.loc[lab].reset_index(drop=True),
                                                unlabelled=[twins.loc[unl].reset_index(drop=True)]), alpha=0.05)
        terms = [k.split("/")[3] for k in out if k.startswith("truth/")]
        hits.append([out[f"ppi/regression/disclosure/{t}/ci_low"] <= out[f"truth/regression/disclosure/{t}/coef"]
                     <= out[f"ppi/regression/disclosure/{t}/ci_high"] for t in terms])
        width_ratio.append(out["ppi/regression/disclosure/width/mean"]
                           / out["pilot_only/regression/disclosure/width/mean"])
    coverage = pd.Series(np.mean(hits, axis=0), index=terms)
    assert coverage.min() >= 0.88 and abs(coverage.mean() - 0.95) <= 0.03, coverage.to_dict()
    # a random tiny model carries no information: lam is tuned towards 0, so PPI is never much wider
    assert np.mean(width_ratio) < 1.1
