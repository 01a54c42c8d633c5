"""Synthetic respondents in the SURVEY_SPEC.md file format, checked against a spec.

A synthetic data set is a CSV or parquet file (or a frame an arm produced) with the spec's
persona, condition and question columns, stored codes as values, and optionally `twin_of`
(the id of the human whose persona the respondent was given) and `<question>__p__<code>`
(the probability the model gave that option).
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from fidelity_exp.errors import Problem, SpecError
from fidelity_exp.study.data import canonical_frame, id_text, plain
from fidelity_exp.study.sources import SourceError, read_source
from fidelity_exp.study.spec import StudySpec

log = logging.getLogger(__name__)
PROB_SEP = "__p__"


def read_table(path: str, what: str, text_columns: tuple[str, ...] = ()) -> pd.DataFrame:
    """A CSV or parquet file (by extension), with the usual clear errors; ids (`text_columns`) as text."""
    kind = "parquet" if str(path).lower().endswith((".parquet", ".pq")) else "csv"
    try:
        return read_source({"kind": kind, "path": path}, text_columns)
    except SourceError as e:
        raise SourceError(f"{what}: {str(e).removeprefix('source.path: ').removeprefix('source: ')}") from None


def check_synthetic(spec: StudySpec, raw: pd.DataFrame, *, name: str, human_ids: pd.Index | None) -> pd.DataFrame:
    """Check a synthetic frame against the spec (and its `twin_of` against the humans' ids) and
    return it canonical: question/condition columns categorical, `twin_of` and the probability
    columns kept. Every problem is reported at once, naming the column and value."""
    problems: list[Problem] = []
    prob_cols = [c for c in raw.columns if PROB_SEP in str(c)]
    for col in prob_cols:
        question, _, code = str(col).partition(PROB_SEP)
        if question not in spec.question_columns:
            problems.append(Problem(col, f"a probability column for {question!r}, which is not a question of "
                                         f"the spec (questions: {', '.join(spec.question_columns)})"))
        elif code not in [str(c) for c in spec.question(question).codes]:
            problems.append(Problem(col, f"code {code!r} is not an option of {question!r} "
                                         f"(codes: {list(spec.question(question).codes)!r})"))
        else:
            p = pd.to_numeric(raw[col], errors="coerce")
            bad = raw[col][(p.isna() & raw[col].notna()) | (p < 0) | (p > 1)]
            if len(bad):
                problems.append(Problem(col, f"probabilities must be numbers in [0, 1]; found {plain(bad.iloc[0])!r} "
                                             f"in row {int(bad.index[0])}"))
    if human_ids is not None and "twin_of" in raw.columns:
        twin_of = raw["twin_of"]
        if not pd.api.types.is_numeric_dtype(human_ids):
            twin_of = pd.Series(id_text(twin_of), index=twin_of.index)
        elif not pd.api.types.is_numeric_dtype(twin_of) and pd.api.types.is_numeric_dtype(human_ids):
            twin_of = pd.to_numeric(twin_of, errors="coerce")
        unknown = twin_of[~twin_of.isin(human_ids)]
        if len(unknown):
            examples = [plain(v) for v in pd.unique(unknown.astype(object))][:5]
            problems.append(Problem("twin_of", f"{len(unknown)} twin ids are not among the {len(human_ids)} human ids "
                                               f"(for example {examples!r} in rows {list(unknown.index[:5])})"))
        raw = raw.assign(twin_of=twin_of)
    known = set(spec.columns) | {"twin_of"} | set(prob_cols)
    ignored = [c for c in raw.columns if c not in known]
    if ignored:
        log.info("%s: ignoring columns the spec does not use: %s", name, ", ".join(map(str, ignored)))
    try:
        frame = canonical_frame(spec, raw.reset_index(drop=True), origin=name, data_name=name, use_id=False,
                                extra_ok=["twin_of", *prob_cols])
    except SpecError as e:
        problems += e.problems
        frame = None
    for i, q in enumerate(spec.questions):
        if frame is not None and frame[q.column].isna().all():
            problems.append(Problem(f"questions[{i}]", f"column {q.column!r} has no answers at all: there is nothing "
                                    "to score for this question"))
    if problems:
        raise SpecError(name, problems, what="the synthetic data (expected: SURVEY_SPEC.md's file format)")
    for col in prob_cols:
        frame[col] = pd.to_numeric(frame[col]).to_numpy(dtype=float)
    frame.index = pd.RangeIndex(len(frame), name="row")
    return frame


def probability_columns(spec: StudySpec) -> list[str]:
    return [f"{q.column}{PROB_SEP}{code}" for q in spec.questions for code in q.codes]


def as_file_frame(spec: StudySpec, frame: pd.DataFrame) -> pd.DataFrame:
    """A canonical synthetic frame back in the file format (stored codes; missing as empty)."""
    cols = [c for c in ["twin_of", *spec.columns, *probability_columns(spec)] if c in frame.columns]
    out = frame[cols].copy()
    for c in spec.question_columns + spec.condition_columns:
        out[c] = out[c].astype(object).where(out[c].notna(), np.nan)
    return out
