"""The catalogue of broken inputs, each through the command line's entry point in a fresh directory
(`fidelity_exp.__main__.main` with its argv, in this process: tests/command.py; the cases in
`AS_PROCESSES` also as real `python -m fidelity_exp` processes).

Every case must end with a non-zero exit, one message that names the file, key and value and
says what was expected, no Python traceback, and no run left RUNNING in the store (a run that
had started must be FAILED with the reason as its `error` tag; most cases never start one).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest
import yaml

from ..conftest import tiny_frame, tiny_spec
from ..command import cli, main
from .store import run_rows

TERMINAL = {"FINISHED", "FAILED", "KILLED"}
FAST = ("arms=[pilot_resample,tabular]", "metrics.bootstrap=5", "metrics.reference_splits=2", "pilot.n=20")


@dataclass
class Case:
    """`prepare(folder)` writes the user's files and returns the command-line arguments."""

    prepare: Callable[[Path], list[str]]
    expect: tuple[str, ...]            # fragments the message must contain (file, key, value, expectation)
    run_may_exist: bool = False        # the error can only show once a run has started (then it is FAILED)
    env: dict = field(default_factory=dict)   # environment variables the command sees


def _study(folder: Path, frame=None, csv_text: str | None = None, csv_bytes: bytes | None = None,
           name: str = "mine", **changes) -> list[str]:
    """The user's own study folder: my_conf/data/<name>.yaml over survey.csv, found via hydra.searchpath."""
    conf = folder / "my_conf" / "data"
    conf.mkdir(parents=True, exist_ok=True)
    csv = folder / "survey.csv"
    if csv_bytes is not None:
        csv.write_bytes(csv_bytes)
    elif csv_text is not None:
        csv.write_text(csv_text)
    else:
        (tiny_frame() if frame is None else frame).to_csv(csv, index=False)
    spec = tiny_spec(Path("survey.csv"), name=name)
    for key, value in changes.items():
        if callable(value):
            value(spec)
        else:
            spec[key] = value
    (conf / f"{name}.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    return [f"hydra.searchpath=[file://{folder / 'my_conf'}]", f"data={name}", *FAST]


def _spec_path(folder: Path, name: str = "mine") -> str:
    return str(folder / "my_conf" / "data" / f"{name}.yaml")


def _with_frame(change: Callable) -> Callable[[Path], list[str]]:
    def prepare(folder: Path) -> list[str]:
        frame = tiny_frame()
        change(frame)
        return _study(folder, frame=frame)
    return prepare


def _set_question(i: int, **changes):
    def edit(spec):
        spec["questions"][i].update(changes)
    return edit


def _synthetic(folder: Path, change: Callable) -> list[str]:
    args = _study(folder)
    frame = tiny_frame().rename(columns={"rid": "twin_of"})
    change(frame)
    frame.to_csv(folder / "twins.csv", index=False)
    return [*args, "+experiment=evaluate", "evaluate.synthetic=twins.csv"]


def _malformed_yaml(folder: Path) -> list[str]:
    args = _study(folder)
    Path(_spec_path(folder)).write_text("name: mine\nquestions:\n  - column: trust\n   text: [unclosed\n")
    return args


def _python_tag(folder: Path) -> list[str]:
    """A spec that would run a command if it were read with an unsafe YAML loader."""
    args = _study(folder)
    spec = Path(_spec_path(folder))
    text = spec.read_text()
    assert "intro: A tiny survey." in text
    spec.write_text(text.replace("intro: A tiny survey.",
                                 f"intro: !!python/object/apply:os.system ['touch {folder / 'PWNED'}']"))
    return args


def _corrupt_adapter(folder: Path) -> list[str]:
    adapter = folder / "my_adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text('{"peft_type": "LORA", "r": 8}')
    (adapter / "adapter_model.safetensors").write_bytes(b"\x00\x01not a safetensors file")
    return [*_study(folder)[:2], "model=tiny_random", "finetune=registered", f"finetune.uri={adapter}",
            "arms=[finetuned]", "metrics.bootstrap=5", "metrics.reference_splits=2", "pilot.n=20"]


def _csv_rows(folder: Path, edit: Callable[[list[str]], list[str]]) -> list[str]:
    """The user's study over a CSV whose lines `edit` changed (header first)."""
    return _study(folder, csv_text="\n".join(edit(tiny_frame().to_csv(index=False).splitlines())) + "\n")


def _trailing_delimiters(lines: list[str]) -> list[str]:
    return [lines[0]] + [line + "," for line in lines[1:]]


def _column_named(folder: Path, column: str) -> list[str]:
    """A spec whose first question's column is `column` (in the data, the spec's formula and pair)."""
    def edit(spec):
        spec["questions"][0]["column"] = column
        spec["coherence"][0]["belief"] = column
        spec["regressions"]["buy_model"]["formula"] = f"buy ~ Q('{column}') + age"
    return _study(folder, frame=tiny_frame().rename(columns={"trust": column}), rename=edit)


def _synthetic_csv(folder: Path, edit: Callable[[list[str]], list[str]]) -> list[str]:
    args = _study(folder)
    lines = tiny_frame().rename(columns={"rid": "twin_of"}).to_csv(index=False).splitlines()
    (folder / "twins.csv").write_text("\n".join(edit(lines)) + "\n")
    return [*args, "+experiment=evaluate", "evaluate.synthetic=twins.csv"]


def _leading_zero_ids(folder: Path) -> list[str]:
    """Humans with ids '007'-style; a synthetic file whose twin ids lost their zeros ('7')."""
    frame = tiny_frame()
    frame["rid"] = [f"{i:03d}" for i in range(len(frame))]
    args = _study(folder, frame=frame)
    twins = frame.rename(columns={"rid": "twin_of"})
    twins["twin_of"] = [str(i) for i in range(len(twins))]
    twins.to_csv(folder / "twins.csv", index=False)
    return [*args, "+experiment=evaluate", "evaluate.synthetic=twins.csv"]


def _alias_bomb(folder: Path) -> list[str]:
    """A 1 KB spec of nested anchors that would expand to 9^9 values."""
    args = _study(folder)
    spec = Path(_spec_path(folder))
    bomb = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    bomb += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 9)]
    spec.write_text(spec.read_text() + "\n".join(bomb) + "\n")
    return args


def _a_file(folder: Path) -> Path:
    (folder / "afile").write_text("not a folder")
    return folder / "afile"


CASES: dict[str, Case] = {
    # -- the spec file -------------------------------------------------------------------------------------
    "malformed_yaml": Case(_malformed_yaml, ("mine.yaml", "line")),
    "yaml_python_tag": Case(_python_tag, ("mine.yaml", "python/object")),
    "spec_name_path_traversal": Case(lambda f: _study(f, rename=lambda spec: spec.update(name="../../outside")),
                                     ("mine.yaml", "name", "../../outside", "identifier")),
    "unknown_top_level_key": Case(lambda f: _study(f, colour="blue"), ("mine.yaml", "colour", "unknown key")),
    "unknown_question_key": Case(lambda f: _study(f, questions=_set_question(0, txt="Trust?")),
                                 ("mine.yaml", "questions[0]", "txt")),
    "question_type_unknown": Case(lambda f: _study(f, questions=_set_question(0, type="likert")),
                                  ("mine.yaml", "questions[0].type", "likert")),
    "persona_column_also_a_question": Case(
        lambda f: _study(f, persona=[{"column": "trust", "label": "Trust", "type": "numeric"}]),
        ("mine.yaml", "trust", "already used in persona")),
    "formula_unknown_column": Case(
        lambda f: _study(f, regressions={"m": {"formula": "buy ~ trust + incme", "family": "logit"}}),
        ("mine.yaml", "regressions.m.formula", "incme")),
    "regression_family_unknown": Case(
        lambda f: _study(f, regressions={"m": {"formula": "buy ~ trust", "family": "tobit"}}),
        ("mine.yaml", "regressions.m.family", "tobit", "logit")),
    "subgroup_without_members": Case(
        lambda f: _study(f, subgroups={"region": {"column": "region", "groups": {"North": ["n"], "West": ["w"]}}}),
        ("mine.yaml", "subgroups.region", "West")),
    "option_code_wrong_type": Case(lambda f: _study(f, questions=_set_question(0, options={"1": "Low", "2": "Mid",
                                                                                          "3": "High"})),
                                   ("mine.yaml", "trust", "'1'")),
    # -- the data file ---------------------------------------------------------------------------------------
    "column_missing_from_data": Case(_with_frame(lambda fr: fr.pop("age")),
                                     ("mine.yaml", "age", "survey.csv")),
    "duplicate_ids": Case(_with_frame(lambda fr: fr.__setitem__("rid", ["r000"] * len(fr))),
                          ("mine.yaml", "rid", "unique", "r000")),
    "value_not_an_option": Case(_with_frame(lambda fr: fr.__setitem__("trust", [7] + list(fr.trust[1:]))),
                                ("mine.yaml", "trust", "7", "r000")),
    "question_all_missing": Case(_with_frame(lambda fr: fr.__setitem__("trust", None)),
                                 ("mine.yaml", "trust", "no answers")),
    "non_numeric_in_numeric_persona": Case(
        _with_frame(lambda fr: fr.__setitem__("age", ["forty"] + list(fr.age[1:].astype(str)))),
        ("mine.yaml", "age", "forty", "numeric")),
    "empty_file": Case(lambda f: _study(f, csv_text=""), ("mine.yaml", "survey.csv", "empty")),
    "header_only": Case(lambda f: _study(f, csv_text="rid,age,region,trust,buy\n"),
                        ("mine.yaml", "survey.csv", "no rows")),
    "semicolon_delimiter": Case(lambda f: _study(f, csv_text=tiny_frame().to_csv(index=False, sep=";")),
                                ("mine.yaml", "delimiter")),
    "utf16_encoding": Case(lambda f: _study(f, csv_bytes=tiny_frame().to_csv(index=False).encode("utf-16")),
                           ("mine.yaml", "survey.csv", "UTF-8")),
    "source_missing": Case(lambda f: _study(f, source={"kind": "csv", "path": "nowhere.csv"}),
                           ("mine.yaml", "source", "nowhere.csv")),
    # -- config values ---------------------------------------------------------------------------------------
    "pilot_n_zero": Case(lambda f: [*_study(f), "pilot.n=0"], ("pilot.n=0", "expected an integer from 1 to 39")),
    "pilot_n_negative": Case(lambda f: [*_study(f), "pilot.n=-5"], ("pilot.n=-5", "expected an integer")),
    "pilot_n_above_data": Case(lambda f: [*_study(f), "pilot.n=500"], ("pilot.n=500", "40 respondents")),
    "unknown_metric_family": Case(lambda f: [*_study(f), "metrics.families=[divergence,vibes]"],
                                  ("metrics.families", "vibes", "divergence")),
    "unknown_score_component": Case(lambda f: [*_study(f), "metrics.score_components=[divergence/js/mean,vibes/x]"],
                                    ("metrics.score_components", "vibes/x", "divergence/js/mean")),
    "unknown_arm": Case(lambda f: [*_study(f), "arms=[oracle]"], ("arms", "oracle", "tabular")),
    "unknown_model_preset": Case(lambda f: [*_study(f), "model=gpt5"], ("model", "gpt5", "smollm2_135m")),
    "unknown_config_key": Case(lambda f: [*_study(f), "pilot.size=3"], ("pilot.size",)),
    "eval_n_zero": Case(lambda f: [*_study(f), "eval.n=0"], ("eval.n=0", "expected")),
    "arm_option_of_wrong_type": Case(lambda f: [*_study(f), "arms.tabular.l2=lots"],
                                     ("arms.tabular.l2", "lots", "Float")),
    "arm_option_out_of_range": Case(lambda f: [*_study(f), "arms.tabular.l2=-1"], ("arms.tabular.l2", "-1", ">= 0")),
    "unknown_option_order": Case(lambda f: [*_study(f), "simulate.option_order=sideways"],
                                 ("simulate.option_order", "sideways", "averaged")),
    "finetune_option_order_reversed": Case(lambda f: [*_study(f), "finetune.option_order=reversed"],
                                           ("finetune.option_order", "reversed", "fixed, random")),
    "negative_simulate_batch_size": Case(lambda f: [*_study(f), "simulate.batch_size=-4"],
                                         ("simulate.batch_size", "-4", ">= 1")),
    "position_metrics_not_a_bool": Case(lambda f: [*_study(f), "simulate.position_metrics=often"],
                                        ("simulate.position_metrics", "often", "Bool")),
    "position_twins_zero": Case(lambda f: [*_study(f), "simulate.position_twins=0"],
                                ("simulate.position_twins", "0", ">= 1", "all")),
    "position_twins_a_word": Case(lambda f: [*_study(f), "simulate.position_twins=most"],
                                  ("simulate.position_twins", "most", "all")),
    "unknown_interval_method": Case(lambda f: [*_study(f), "metrics.interval=bca"],
                                    ("metrics.interval", "bca", "bias_aware")),
    "fdr_out_of_range": Case(lambda f: [*_study(f), "metrics.fdr=1.5"], ("metrics.fdr", "1.5", "(0, 1)")),
    "permutations_too_few_for_the_fdr": Case(lambda f: [*_study(f), "metrics.permutations=10"],
                                             ("metrics.permutations", "10", "at least 19", "metrics.fdr=0.05")),
    "permutations_beyond_memory": Case(lambda f: [*_study(f), "metrics.permutations=100000000"],
                                       ("metrics.permutations", "100000000", "at most", "GiB", "20 humans")),
    "bootstrap_beyond_memory": Case(lambda f: [*_study(f), "metrics.bootstrap=100000000"],
                                    ("metrics.bootstrap", "100000000", "at most", "GiB")),
    "negative_permutations": Case(lambda f: [*_study(f), "metrics.permutations=-3"],
                                  ("metrics.permutations", "-3", ">= 0")),
    "comparison_of_an_arm_not_run": Case(lambda f: [*_study(f), "metrics.compare=[[tabular,base]]"],
                                         ("metrics.compare", "tabular__vs__base", "pilot_resample, tabular")),
    "evaluate_comparison_of_an_arm_not_there": Case(
        lambda f: _synthetic(f, lambda fr: None) + ["metrics.compare=[[synthetic,gpt]]"],
        ("metrics.compare", "synthetic__vs__gpt")),
    # -- evaluate-only synthetic files -----------------------------------------------------------------------
    "synthetic_missing_column": Case(lambda f: _synthetic(f, lambda fr: fr.pop("buy")),
                                     ("twins.csv", "buy", "is not in")),
    "synthetic_unknown_code": Case(lambda f: _synthetic(f, lambda fr: fr.__setitem__("buy", ["maybe"] * len(fr))),
                                   ("twins.csv", "buy", "maybe")),
    "synthetic_wrong_twin_ids": Case(
        lambda f: _synthetic(f, lambda fr: fr.__setitem__("twin_of", [f"x{i}" for i in range(len(fr))])),
        ("twins.csv", "twin_of", "x0")),
    "synthetic_file_missing": Case(lambda f: [*_study(f), "+experiment=evaluate", "evaluate.synthetic=none.csv"],
                                   ("evaluate.synthetic", "none.csv")),
    # -- config values: every group's declared types and ranges (settings.py), before any run ------------
    "seed_negative": Case(lambda f: [*_study(f), "seed=-1"], ("seed=-1", "0 to 4294967295")),
    "seed_beyond_32_bits": Case(lambda f: [*_study(f), "metrics.seed=99999999999"], ("metrics.seed", "99999999999")),
    "alpha_above_one": Case(lambda f: [*_study(f), "metrics.alpha=1.5"], ("metrics.alpha", "1.5", "(0, 1)")),
    "bootstrap_not_a_number": Case(lambda f: [*_study(f), "metrics.bootstrap=many"], ("metrics.bootstrap", "many")),
    "one_bootstrap_replicate": Case(lambda f: [*_study(f), "metrics.bootstrap=1"],
                                    ("metrics.bootstrap", "1", "zero-width", "at least 2")),
    "min_group_size_negative": Case(lambda f: [*_study(f), "metrics.min_group_size=-3"],
                                    ("metrics.min_group_size", "-3", ">= 1")),
    "temperature_nan": Case(lambda f: [*_study(f), "simulate.temperature=nan"], ("simulate.temperature", "nan", ">= 0")),
    "temperature_infinite": Case(lambda f: [*_study(f), "simulate.temperature=inf"], ("simulate.temperature", "inf")),
    "lora_rank_zero": Case(lambda f: [*_study(f), "finetune.lora.rank=0"], ("finetune.lora.rank", "0", "1 to 4096")),
    "lora_dropout_one": Case(lambda f: [*_study(f), "finetune.lora.dropout=1.0"], ("finetune.lora.dropout", "[0, 1)")),
    "lora_no_target_modules": Case(lambda f: [*_study(f), "finetune.lora.target_modules=[]"],
                                   ("finetune.lora.target_modules", "non-empty")),
    "learning_rate_negative": Case(lambda f: [*_study(f), "finetune.learning_rate=-1"],
                                   ("finetune.learning_rate", "-1", "(0, 1]")),
    "epochs_zero": Case(lambda f: [*_study(f), "finetune.epochs=0"], ("finetune.epochs", "0", "1 to 1000")),
    "max_steps_zero": Case(lambda f: [*_study(f), "finetune.max_steps=0"], ("finetune.max_steps", "0", "null")),
    "scheduler_unknown": Case(lambda f: [*_study(f), "finetune.scheduler=annealing"],
                              ("finetune.scheduler", "annealing", "cosine")),
    "finetune_method_unknown": Case(lambda f: [*_study(f), "finetune.method=qlora9"], ("finetune.method", "qlora9")),
    "registered_without_uri": Case(lambda f: [*_study(f), "finetune=registered"], ("finetune.uri", "models:/")),
    "model_device_unknown": Case(lambda f: [*_study(f), "model.device=gpu"], ("model.device", "gpu", "cuda:N")),
    "model_dtype_unknown": Case(lambda f: [*_study(f), "model.dtype=float8"], ("model.dtype", "float8", "bfloat16")),
    "model_heads_do_not_divide": Case(lambda f: [*_study(f), "model=tiny_random",
                                                 "model.architecture.num_key_value_heads=3"],
                                      ("model.architecture.num_key_value_heads", "3", "divisor")),
    "finetune_fraction_zero": Case(lambda f: [*_study(f), "pilot.finetune_fraction=0"],
                                   ("pilot.finetune_fraction", "0", "(0, 1]")),
    "crossfit_folds_zero": Case(lambda f: [*_study(f), "pilot.crossfit_folds=0"], ("pilot.crossfit_folds", "0")),
    "validation_n_negative": Case(lambda f: [*_study(f), "validation.n=-2"], ("validation.n", "-2")),
    "eval_seed_negative": Case(lambda f: [*_study(f), "eval.seed=-7"], ("eval.seed", "-7")),
    "score_on_unknown": Case(lambda f: [*_study(f), "score_on=test"], ("score_on", "test", "validation")),
    "ppi_predictions_unknown": Case(lambda f: [*_study(f), "ppi.predictions=median"], ("ppi.predictions", "median")),
    "run_name_too_long": Case(lambda f: [*_study(f), "tracking.run_name=" + "x" * 300],
                              ("tracking.run_name", "300 characters", "1 to 250")),
    "no_metric_families": Case(lambda f: [*_study(f), "metrics.families=[]"], ("metrics.families", "at least one")),
    "no_score_components": Case(lambda f: [*_study(f), "metrics.score_components=[]"],
                                ("metrics.score_components", "at least one")),
    "stratum_for_a_random_pilot": Case(lambda f: [*_study(f), "pilot.by=region"], ("pilot.by", "region", "stratified")),
    "run_id_malformed": Case(lambda f: [*_study(f), "tracking.run_id=abc"], ("tracking.run_id", "abc", "32 hex")),
    # -- names that become metric keys: checked where they are born ---------------------------------------
    "regressions_collide_after_sanitising": Case(
        lambda f: _study(f, regressions={"m 1": {"formula": "buy ~ trust", "family": "logit"},
                                         "m_1": {"formula": "buy ~ age", "family": "logit"}}),
        ("mine.yaml", "regressions.m_1", "m 1", "merge")),
    "subgroups_collide_after_sanitising": Case(
        lambda f: _study(f, subgroups={"home region": {"column": "region", "groups": {"North": ["n"], "South": ["s"]}},
                                       "home_region": {"column": "region", "groups": {"N": ["n"], "S": ["s"]}}}),
        ("mine.yaml", "subgroups.home_region", "home region")),
    "levels_differ_only_by_case": Case(
        lambda f: _study(f, subgroups={"region": {"column": "region", "groups": {"North": ["n"], "north": ["s"]}}}),
        ("mine.yaml", "subgroups.region.groups.north", "North")),
    "question_named_like_a_key_word": Case(lambda f: _column_named(f, "mean"), ("mine.yaml", "questions[0].column",
                                                                                "mean", "rename")),
    "question_name_too_long": Case(lambda f: _column_named(f, "q" * 70), ("mine.yaml", "questions[0].column",
                                                                          "70 characters")),
    "regression_name_with_double_dot": Case(
        lambda f: _study(f, regressions={"a..b": {"formula": "buy ~ trust", "family": "logit"}}),
        ("mine.yaml", "regressions.a..b", "'..'")),
    "coherence_pair_twice": Case(
        lambda f: _study(f, coherence=[{"belief": "trust", "action": "buy"}, {"belief": "trust", "action": "buy"}]),
        ("mine.yaml", "coherence[1]", "coherence[0]")),
    "arm_named_like_a_key_prefix": Case(
        lambda f: [*_study(f), "+arms.reference._target_=fidelity_exp.arms.tabular.Tabular"],
        ("arms", "reference", "rename")),
    "evaluate_arm_with_pair_separator": Case(lambda f: _synthetic(f, lambda fr: None) + ["evaluate.arm=a__vs__b"],
                                             ("evaluate.arm", "a__vs__b", "__vs__")),
    # -- data read as the spec says -----------------------------------------------------------------------
    "trailing_delimiters": Case(lambda f: _csv_rows(f, _trailing_delimiters),
                                ("mine.yaml", "survey.csv", "line 2", "6 fields", "header has 5")),
    "one_row_with_an_extra_field": Case(lambda f: _csv_rows(f, lambda ls: ls[:7] + [ls[7] + ",9"] + ls[8:]),
                                        ("mine.yaml", "survey.csv", "line 8", "6 fields")),
    "duplicate_column_names": Case(lambda f: _csv_rows(f, lambda ls: [ls[0] + ",trust"] + [x + ",1" for x in ls[1:]]),
                                   ("mine.yaml", "survey.csv", "duplicate column", "trust")),
    "infinite_numeric_persona": Case(_with_frame(lambda fr: fr.__setitem__("age", [float("inf")] + list(fr.age[1:]))),
                                     ("mine.yaml", "age", "inf", "finite")),
    "synthetic_question_never_answered": Case(lambda f: _synthetic(f, lambda fr: fr.__setitem__("trust", None)),
                                              ("twins.csv", "trust", "no answers")),
    "synthetic_trailing_delimiters": Case(lambda f: _synthetic_csv(f, _trailing_delimiters),
                                          ("twins.csv", "line 2", "header")),
    "synthetic_twin_ids_lost_leading_zeros": Case(_leading_zero_ids, ("twins.csv", "twin_of", "'0'")),
    "synthetic_twin_of_shifted_one_row": Case(
        lambda f: _synthetic(f, lambda fr: fr.__setitem__("twin_of", list(fr.twin_of[1:]) + [fr.twin_of[0]])),
        ("twins.csv", "twin_of", "40 of 40 twins", "contradict", "shifted")),
    "synthetic_twin_of_capitalised": Case(lambda f: _synthetic(f, lambda fr: fr.rename(columns={"twin_of": "Twin_of"},
                                                                                       inplace=True)),
                                          ("twins.csv", "Twin_of", "rename it to twin_of")),
    # -- resources, stores and folders ---------------------------------------------------------------------
    "yaml_alias_bomb": Case(_alias_bomb, ("mine.yaml", "aliases", "100,000")),
    "tracking_uri_unknown_scheme": Case(lambda f: [*_study(f), "tracking.uri=bogus://x"],
                                        ("tracking.uri", "bogus://x", "sqlite")),
    "tracking_server_down": Case(lambda f: [*_study(f), "tracking.uri=http://127.0.0.1:9"],
                                 ("tracking.uri", "http://127.0.0.1:9", "a tracking server that answers", "refused")),
    "tracking_uri_from_the_environment": Case(lambda f: _study(f), ("MLFLOW_TRACKING_URI", "ftp://x", "schemes"),
                                              env={"MLFLOW_TRACKING_URI": "ftp://x"}),
    "sqlite_store_under_a_file": Case(lambda f: [*_study(f), f"tracking.uri=sqlite:///{_a_file(f)}/sub/mlflow.db"],
                                      ("tracking.uri", "afile", "Not a directory")),
    "artifact_root_under_a_file": Case(lambda f: [*_study(f), f"tracking.artifact_root={_a_file(f)}/art"],
                                       ("tracking.artifact_root", "afile", "Not a directory")),
    "run_directory_cannot_be_made": Case(lambda f: [*_study(f), f"hydra.run.dir={_a_file(f)}/run"],
                                         ("run directory", "afile", "hydra.run.dir")),
    # -- models ----------------------------------------------------------------------------------------------
    "corrupt_adapter": Case(_corrupt_adapter, ("my_adapter", "adapter_model.safetensors", "safetensors")),
    "qlora_on_a_cpu": Case(lambda f: [*_study(f)[:2], "model=tiny_random", "model.device=cpu", "finetune=qlora",
                                      "arms=[finetuned]", "pilot.n=20"], ("finetune", "qlora", "CUDA", "finetune=lora")),
    "an_8b_model_in_float32_on_this_machine": Case(
        lambda f: [*_study(f)[:2], "model=llama3_1_8b_shape", "model.device=cpu", "arms=[base,finetuned]", "pilot.n=20"],
        ("llama3_1_8b_shape", "8.03B", "float32", "GiB", "finetune.gradient_checkpointing=true",
         "model.memory_check=false")),
    "unknown_model_shape": Case(lambda f: [*_study(f), "model=tiny_random", "+model.shape=gpt5"],
                                ("shape", "gpt5", "llama3_1_8b")),
}


def _runs(folder: Path) -> list[tuple[str, str | None]]:
    """(status, error tag) of every run in the case's store; [] when no store was created."""
    db = folder / "mlruns" / "mlflow.db"
    return [(status, error) for _, status, error in run_rows(db)] if db.exists() else []


# One case of each kind also runs as a real process: the spec, the data, Hydra's own parsing, a
# typed option, a synthetic file, the tracking store from the environment, a model check.
AS_PROCESSES = ("malformed_yaml", "column_missing_from_data", "unknown_config_key", "lora_rank_zero",
                "synthetic_unknown_code", "tracking_uri_from_the_environment", "an_8b_model_in_float32_on_this_machine")


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory):
    """Every case run once through the entry point, the `AS_PROCESSES` ones also as processes (each
    in its own directory): (name, how) -> (folder, result)."""
    done = {}
    for name in sorted(CASES):
        for how, run in (("main", main), ("process", cli)):
            if how == "main" or name in AS_PROCESSES:
                folder = tmp_path_factory.mktemp(f"{name}-{how}")
                done[name, how] = folder, run(*CASES[name].prepare(folder), cwd=folder, env=CASES[name].env)
    return done


@pytest.mark.parametrize("name, how", [(n, "main") for n in sorted(CASES)] + [(n, "process") for n in AS_PROCESSES])
def test_bad_input_one_clear_message_nothing_half_written(name, how, outcomes):
    case = CASES[name]
    tmp_path, done = outcomes[name, how]
    message = done.stderr.strip()
    assert done.returncode != 0, f"{name}: exit 0\n{done.stdout[-2000:]}"
    assert "Traceback" not in done.stderr, f"{name}: traceback\n{done.stderr[-3000:]}"
    assert message, f"{name}: no message"
    missing = [frag for frag in case.expect if frag.lower() not in message.lower()]
    assert not missing, f"{name}: message lacks {missing}:\n{message}"
    assert not (tmp_path / "PWNED").exists()
    runs = _runs(tmp_path)
    if not case.run_may_exist:
        assert runs == [], f"{name}: bad input created runs {runs}"
    for status, error in runs:
        assert status in TERMINAL and status != "FINISHED", f"{name}: a run left {status}"
        assert error, f"{name}: a FAILED run without its reason"


def test_the_catalogue_is_large_enough():
    assert len(CASES) >= 70 and set(AS_PROCESSES) <= set(CASES)
