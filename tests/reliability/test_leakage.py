"""No leakage: evaluation twins are never pilot respondents, the validation humans a sweep tunes on
are neither, and what the model is fine-tuned on is exactly the pilot's interviews, checked on the
rendered training set of a real run."""

from __future__ import annotations

from collections import Counter

import pandas as pd
from mlflow.tracking import MlflowClient

import fidelity_exp.llm.finetune as finetune_module
from fidelity_exp import pipeline
from fidelity_exp.arms.llm import answers_of, records
from fidelity_exp.llm.interview import Renderer
from fidelity_exp.llm.models import load_tokenizer

from ..conftest import settings, split_of, store_uri

RUN = ("+experiment=quickstart", "model=tiny_random", "finetune.max_steps=2", "eval.n=60", "validation.n=30",
       "arms=[finetuned,pilot_resample]", "metrics.bootstrap=5", "metrics.reference_splits=2")


def _artifact(client, run_id: str, path: str, dest) -> pd.DataFrame:
    return pd.read_csv(client.download_artifacts(run_id, path, str(dest)), dtype={"id": str, "twin_of": str})


def test_pilot_validation_evaluation_disjoint_and_training_only_on_pilot(composer, tmp_path, monkeypatch):
    rendered: list[list[int]] = []

    def recording_training_set(renderer, given, answers, *args, **kwargs):   # the real function, output kept
        rows = real_training_set(renderer, given, answers, *args, **kwargs)
        rendered.extend(row["input_ids"] for row in rows)
        return rows

    real_training_set = finetune_module.training_set
    monkeypatch.setattr(finetune_module, "training_set", recording_training_set)

    cfg, choices = composer(*RUN)
    study = pipeline.setup_study(cfg.data, choices.get("data"))
    split = split_of(cfg, study)
    pipeline.run(cfg, choices=choices, output_dir=tmp_path / "out")

    client = MlflowClient(store_uri(cfg))
    (run,) = client.search_runs([client.get_experiment_by_name("anes96").experiment_id])
    pilot = set(_artifact(client, run.info.run_id, "split/pilot_ids.csv", tmp_path / "p").id.astype(str))
    evaluation = set(_artifact(client, run.info.run_id, "split/evaluation_ids.csv", tmp_path / "e").id.astype(str))
    validation = {str(i) for i in split.validation}
    assert pilot == {str(i) for i in split.pilot} and len(pilot) == 100
    assert len(evaluation) == 60 and len(validation) == 30
    assert not pilot & evaluation and not pilot & validation and not validation & evaluation

    # every arm's twins are twins of evaluation humans, never of pilot or validation humans
    for arm in ("finetuned", "pilot_resample"):
        twins = set(_artifact(client, run.info.run_id, f"synthetic/{arm}.csv", tmp_path / arm).twin_of.astype(str))
        assert twins == evaluation, arm

    # the fine-tuning set, as rendered: exactly the pilot's interviews, nobody else's
    renderer = Renderer(study.spec, load_tokenizer(settings(cfg).model.tokenizer_source),
                        show_persona=bool(cfg.simulate.show_persona))

    def interviews(ids) -> Counter:
        given = records(study.frame.loc[ids], study.spec.given_columns)
        return Counter(tuple(renderer.training_example(g, a)[0]) for g, a in zip(given, answers_of(study, ids)))

    trained = Counter(tuple(r) for r in rendered)
    assert trained == interviews(split.pilot) and sum(trained.values()) == 100
    # most non-pilot interviews differ from every pilot one, so a leaked one would show above
    others = interviews(split.evaluation.append(split.validation))
    assert sum(1 for k in others if k not in trained) >= 0.9 * sum(others.values())
