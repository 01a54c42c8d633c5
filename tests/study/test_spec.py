"""Study specs: every shipped spec validates; every SURVEY_SPEC.md validation error is reported
with the file, the key and the value; all problems come at once."""

from __future__ import annotations

import copy
from pathlib import Path

import pandas as pd
import pytest
import yaml

from fidelity_exp.errors import SpecError
from fidelity_exp.study import load_spec_file, load_study, numeric_frame, parse_spec, study_from_file
from fidelity_exp.study.loading import read_yaml
from fidelity_exp.study.spec import formula_variables

from ..conftest import CONF, tiny_frame, tiny_spec

SHIPPED = sorted(p.stem for p in (CONF / "data").glob("*.yaml"))


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_spec_validates_with_its_data(name):
    spec = load_spec_file(CONF / "data" / f"{name}.yaml")
    study = load_study(spec)
    assert spec.name == name
    assert len(study) > 100
    assert list(study.frame.columns) == spec.columns
    assert study.frame.index.is_unique
    for q in spec.questions:  # every answer is one of the spec's codes
        assert list(study.frame[q.column].cat.categories) == list(q.options)


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_spec_composes_through_hydra(composer, name):
    from fidelity_exp.pipeline import setup_study

    cfg, choices = composer(f"data={name}")
    study = setup_study(cfg.data, choices["data"])
    assert study.spec.origin.endswith(f"conf/data/{name}.yaml")


def test_anes96_spec_matches_survey_spec_suggestions():
    spec = load_spec_file(CONF / "data" / "anes96.yaml")
    assert spec.persona_columns[:3] == ["age", "educ", "income"]
    assert spec.question_columns == ["selfLR", "ClinLR", "DoleLR", "PID", "vote"]
    assert [q.role for q in spec.questions] == ["belief"] * 4 + ["action"]
    assert spec.regressions[0].family == "logit"
    assert set(spec.regressions[0].variables) == {"vote", "PID", "selfLR", "ClinLR", "DoleLR", "age", "educ", "income"}


def test_numeric_value_rule():
    spec = parse_spec(tiny_spec(Path("x.csv")))
    assert spec.question("trust").numeric_values == {1: 1.0, 2: 2.0, 3: 3.0}  # numeric codes: the code
    assert spec.question("buy").numeric_values == {"no": 0.0, "yes": 1.0}   # text codes: the position


def test_numeric_frame_uses_numeric_values(tiny):
    spec_path, _ = tiny
    study = load_study(load_spec_file(spec_path))
    num = numeric_frame(study.spec, study.frame)
    expected_buy = tiny_frame()["buy"].map({"no": 0.0, "yes": 1.0}).to_numpy()
    assert (num["buy"].to_numpy() == expected_buy).all()
    assert num["trust"].dtype == float


def test_formula_variables():
    assert formula_variables('vote ~ PID + C(educ) + np.log(age) + Q("self.LR")') == (
        "vote", "PID", "educ", "age", "self.LR")
    assert formula_variables("y ~ a:b + I(x**2) - 1") == ("y", "a", "b", "x")


def test_yes_no_codes_stay_text(tmp_path):
    """SURVEY_SPEC.md writes `{no: "No", yes: "Yes"}`; YAML 1.1 would read booleans."""
    csv = tmp_path / "d.csv"
    tiny_frame().to_csv(csv, index=False)
    text = yaml.safe_dump(tiny_spec(csv), sort_keys=False).replace("'no': 'No'", "no: No").replace(
        "'yes': 'Yes'", "yes: Yes")
    assert "no: No" in text
    path = tmp_path / "s.yaml"
    path.write_text(text)
    assert read_yaml(path)["questions"][1]["options"] == {"no": "No", "yes": "Yes"}
    spec = load_spec_file(path)
    assert spec.question("buy").codes == ("no", "yes")


# --- each validation error of SURVEY_SPEC.md ----------------------------------------------


def _problems(tmp_path, spec: dict, frame: pd.DataFrame | None = None) -> str:
    """Write spec (+data) to tmp files, load, and return the SpecError message."""
    csv = Path(spec["source"].get("path", tmp_path / "d.csv")) if isinstance(spec.get("source"), dict) else None
    if frame is not None and csv is not None:
        frame.to_csv(csv, index=False)
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    with pytest.raises(SpecError) as info:
        study_from_file(path)
    message = str(info.value)
    assert str(path) in message, "the message must name the spec file"
    return message


@pytest.fixture
def base(tmp_path):
    csv = tmp_path / "d.csv"
    tiny_frame().to_csv(csv, index=False)
    return tiny_spec(csv), tiny_frame()


def test_unknown_top_level_key(tmp_path, base):
    spec, _ = base
    spec["questionz"] = []
    msg = _problems(tmp_path, spec)
    assert "questionz" in msg and "unknown key" in msg and "questions" in msg


def test_column_missing_from_data(tmp_path, base):
    spec, frame = base
    spec["questions"][0]["column"] = "trusst"
    msg = _problems(tmp_path, spec, frame)
    assert "questions[0].column" in msg and "'trusst'" in msg and "is not in csv file" in msg and "'trust'" in msg


def test_column_both_persona_and_question(tmp_path, base):
    spec, _ = base
    spec["persona"].append({"column": "trust", "type": "ordinal"})
    msg = _problems(tmp_path, spec)
    assert "questions[0].column" in msg and "'trust'" in msg and "persona" in msg


def test_duplicate_ids(tmp_path, base):
    spec, frame = base
    frame.loc[5, "rid"] = "r001"
    msg = _problems(tmp_path, spec, frame)
    assert "id:" in msg and "'rid'" in msg and "r001" in msg and "unique" in msg


def test_option_code_of_wrong_type(tmp_path, base):
    spec, frame = base
    frame["buy"] = frame["buy"].map({"no": 0, "yes": 1})
    msg = _problems(tmp_path, spec, frame)
    # a CSV column with text codes is read as text (codes '01' keep their zero): 0 and 1 are not 'no' and 'yes'
    assert "questions[1].options" in msg and "'buy'" in msg and "'0'" in msg and "['no', 'yes']" in msg


def test_value_not_among_options_names_column_value_row_and_codes(tmp_path, base):
    spec, frame = base
    frame.loc[7, "trust"] = 9
    msg = _problems(tmp_path, spec, frame)
    assert "questions[0].options" in msg and "'trust'" in msg and "9" in msg
    assert "id 'r007'" in msg and "[1, 2, 3]" in msg


def test_subgroup_level_without_members(tmp_path, base):
    spec, frame = base
    spec["subgroups"]["region"]["groups"]["West"] = ["w"]
    msg = _problems(tmp_path, spec, frame)
    assert "subgroups.region.West" in msg and "no members" in msg


def test_coherence_pair_with_wrong_roles(tmp_path, base):
    spec, _ = base
    spec["coherence"] = [{"belief": "buy", "action": "trust"}]
    msg = _problems(tmp_path, spec)
    assert "coherence[0].belief" in msg and "'buy'" in msg and "role 'action'" in msg and "expected role 'belief'" in msg
    assert "coherence[0].action" in msg


def test_formula_naming_unknown_column(tmp_path, base):
    spec, _ = base
    spec["regressions"]["buy_model"]["formula"] = "buy ~ trust + income"
    msg = _problems(tmp_path, spec)
    assert "regressions.buy_model.formula" in msg and "'income'" in msg


def test_source_that_cannot_be_read(tmp_path, base):
    spec, _ = base
    spec["source"] = {"kind": "csv", "path": str(tmp_path / "missing.csv")}
    msg = _problems(tmp_path, spec)
    assert "source" in msg and "missing.csv" in msg and "does not exist" in msg


def test_bad_parquet_file(tmp_path, base):
    spec, _ = base
    bad = tmp_path / "bad.parquet"
    bad.write_text("not parquet")
    spec["source"] = {"kind": "parquet", "path": str(bad)}
    assert "cannot be read as parquet" in _problems(tmp_path, spec)


def test_csv_with_other_delimiter_gets_a_hint(tmp_path, base):
    spec, frame = base
    frame.to_csv(tmp_path / "d.csv", index=False, sep=";")
    msg = _problems(tmp_path, spec)
    assert "set source.sep" in msg


def test_every_problem_reported_at_once(tmp_path, base):
    spec, _ = base
    spec["version"] = "one"
    spec["colour"] = "blue"
    spec["questions"][0]["type"] = "likert"
    spec["regressions"]["buy_model"]["family"] = "poisson"
    msg = _problems(tmp_path, spec)
    assert "4 problems" in msg
    for key in ("version", "colour", "questions[0].type", "regressions.buy_model.family"):
        assert key in msg


def test_malformed_yaml_names_file_and_line(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("name: x\nquestions: [\n")
    with pytest.raises(SpecError) as info:
        load_spec_file(path)
    assert str(path) in str(info.value) and "line" in str(info.value)


def test_parse_spec_accepts_all_keys_from_survey_spec(base):
    spec, _ = base
    full = copy.deepcopy(spec)
    full["conditions"] = [{"column": "arm", "label": "Arm", "texts": {0: "control", 1: "treated"}}]
    parsed = parse_spec(full)
    assert parsed.condition_columns == ["arm"]
    assert parsed.coherence[0].contradiction_action == ("yes",)
    assert parsed.subgroups[0].levels == ("North", "South")
