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
PERSONA_MISMATCH = 0.05   # above this share of paired twins whose given columns contradict their human's: an error


def read_table(path: str, what: str, text_columns: tuple[str, ...] = ()) -> pd.DataFrame:
    """A CSV or parquet file (by extension), with the usual clear errors; ids and text codes
    (`text_columns`) as text; a CSV's encoding (UTF-8, or UTF-16 by its byte-order mark) and
    delimiter (, ; tab |) detected, since such a file has no settings of its own."""
    kind = "parquet" if str(path).lower().endswith((".parquet", ".pq")) else "csv"
    try:
        return read_source({"kind": kind, "path": path, "detect": True}, text_columns)
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
    for col in raw.columns:
        if col != "twin_of" and _spelled_like_twin_of(col):
            problems.append(Problem(str(col), f"column {col!r} is spelled like the pairing column but is not `twin_of` "
                                    "(lower case, an underscore): rename it to twin_of; as it stands the twins have no "
                                    "humans and the tests would silently pool them instead of pairing"))
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


def _spelled_like_twin_of(column: object) -> bool:
    return "".join(ch for ch in str(column).lower() if ch.isalnum()) == "twinof"


def check_given_columns(spec: StudySpec, frame: pd.DataFrame, humans: pd.DataFrame, *, name: str) -> None:
    """Paired twins were given their humans' persona and conditions: where a given column is in
    both, a twin whose value contradicts its human's points at a shifted or wrong `twin_of`. Above
    PERSONA_MISMATCH of the compared twins that is an error naming rows; below it, a warning."""
    if "twin_of" not in frame.columns:
        return
    columns = [c for c in spec.given_columns if c in frame.columns and c in humans.columns]
    rows = humans.index.get_indexer(frame["twin_of"].to_numpy())
    known = rows >= 0
    if not columns or not known.any():
        return
    differs = np.zeros(len(frame), dtype=bool)
    compared = np.zeros(len(frame), dtype=bool)
    first: dict[int, str] = {}
    for c in columns:
        twin = frame[c].astype(object).to_numpy()[known]
        human = humans[c].astype(object).to_numpy()[rows[known]]
        both = ~(pd.isna(twin) | pd.isna(human))
        same = np.array([_same(a, b) for a, b in zip(twin, human)], dtype=bool)
        where = np.flatnonzero(known)
        compared[where[both]] = True
        for r in where[both & ~same]:
            differs[r] = True
            if r not in first:
                i = int(np.searchsorted(where, r))
                first[r] = f"row {int(r)} (twin_of {plain(frame['twin_of'].iloc[r])!r}): {c} {plain(twin[i])!r}, " \
                           f"its human's {plain(human[i])!r}"
    n_diff, n_compared = int(differs.sum()), int(compared.sum())
    if not n_diff:
        return
    examples = "; ".join(first[r] for r in sorted(first)[:3])
    share = n_diff / n_compared
    if share > PERSONA_MISMATCH:
        raise SpecError(name, [Problem("twin_of", f"{n_diff} of {n_compared} twins ({share:.0%}) have given columns "
                                       f"({', '.join(columns)}) that contradict their human's: {examples}. Is "
                                       "`twin_of` shifted or from another file? (More than "
                                       f"{PERSONA_MISMATCH:.0%} is refused; respondents given other personas on "
                                       "purpose: leave out twin_of, and they are scored as a pooled sample)")],
                        what="the synthetic data (expected: each twin's persona and conditions as its human's)")
    log.warning("%s: %d of %d twins have given columns that differ from their human's (%s)", name, n_diff,
                n_compared, examples)


def _same(a: object, b: object) -> bool:
    if isinstance(a, (int, float, np.number)) and isinstance(b, (int, float, np.number)):
        return bool(np.isclose(float(a), float(b), rtol=1e-9, atol=1e-12))
    return str(a) == str(b)


def humans_own_answers(spec: StudySpec, frame: pd.DataFrame, humans: pd.DataFrame) -> bool:
    """True when the synthetic set is the humans' own answers: paired, each twin answers every
    question as its human did; otherwise, the same rows of answers (in any order) as the humans."""
    q = spec.question_columns
    if len(frame) != len(humans):
        return False
    twin = frame[q].astype(object).where(frame[q].notna(), None)
    human = humans[q].astype(object).where(humans[q].notna(), None)
    if "twin_of" in frame.columns:
        rows = humans.index.get_indexer(frame["twin_of"].to_numpy())
        if (rows < 0).any():
            return False
        return bool((twin.to_numpy() == human.to_numpy()[rows]).all())
    as_rows = sorted(map(repr, twin.itertuples(index=False, name=None)))
    return as_rows == sorted(map(repr, human.itertuples(index=False, name=None)))


def probability_columns(spec: StudySpec) -> list[str]:
    return [f"{q.column}{PROB_SEP}{code}" for q in spec.questions for code in q.codes]


def as_file_frame(spec: StudySpec, frame: pd.DataFrame) -> pd.DataFrame:
    """A canonical synthetic frame back in the file format (stored codes; missing as empty)."""
    cols = [c for c in ["twin_of", *spec.columns, *probability_columns(spec)] if c in frame.columns]
    out = frame[cols].copy()
    for c in spec.question_columns + spec.condition_columns:
        out[c] = out[c].astype(object).where(out[c].notna(), np.nan)
    return out
