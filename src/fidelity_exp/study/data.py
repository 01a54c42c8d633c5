"""A spec's human data, read and checked against the spec, in one canonical frame.

`load_study(spec)` reads the source and reports, at once, every way the data breaks the spec
(missing columns, duplicate ids, codes of the wrong type or not among the options, ...).
`canonical_frame(spec, raw, ...)` is the same check for any frame (also synthetic files).

In the canonical frame the index holds the respondent ids (named ``id``); each question and
condition column is a pandas Categorical whose categories are the spec's codes in spec order
(missing answers are NaN); persona columns keep their stored values (numeric persona columns
as floats).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import numpy as np
import pandas as pd

from fidelity_exp.errors import Problem, SpecError
from fidelity_exp.study.sources import SourceError, describe, read_source
from fidelity_exp.study.spec import Code, StudySpec, Subgroup, is_number

MAX_LISTED = 5  # bad values listed per column before "and N more"


@dataclass(frozen=True)
class Study:
    """A spec with its human respondents, checked and in canonical form."""

    spec: StudySpec
    frame: pd.DataFrame  # index: respondent id; columns: spec.columns (canonical types)

    @property
    def ids(self) -> pd.Index:
        return self.frame.index

    def __len__(self) -> int:
        return len(self.frame)


def load_study(spec: StudySpec | None, spec_problems: Iterable[Problem] = (), origin: str | None = None) -> Study:
    """Read the spec's source and check it against the spec; one `SpecError` lists every problem,
    the spec's own (`spec_problems`, from `check_spec`) first, then the data's."""
    problems = list(spec_problems)
    origin = origin or (spec.origin if spec is not None else "<spec>")
    if spec is None:
        raise SpecError(origin, problems)
    try:
        raw = read_source(spec.source, spec.text_columns)
    except SourceError as e:
        raise SpecError(origin, problems + [Problem("source", str(e).removeprefix("source: ").removeprefix("source."))]) from None
    try:
        frame = canonical_frame(spec, raw, origin=origin, data_name=describe(spec.source), use_id=True)
    except SpecError as e:
        raise SpecError(origin, problems + e.problems) from None
    problems += [Problem(f"subgroups.{sg.name}.{level}", msg) for sg, level, msg in _empty_levels(spec, frame)]
    for q in spec.questions:
        if frame[q.column].isna().all():
            problems.append(Problem(f"questions[{spec.question_columns.index(q.column)}]",
                                    f"column {q.column!r} has no answers at all in {describe(spec.source)}"))
    if problems:
        raise SpecError(origin, problems)
    return Study(spec, frame)


def canonical_frame(spec: StudySpec, raw: pd.DataFrame, *, origin: str, data_name: str,
                    use_id: bool = True, extra_ok: Iterable[str] = ()) -> pd.DataFrame:
    """Check `raw` against the spec and return it in canonical form (see module docstring).

    `use_id`: index the frame by the spec's `id` column (row numbers if the spec has none).
    """
    problems: list[Problem] = []
    cols = list(raw.columns)
    index = _ids(spec, raw, data_name, problems) if use_id else raw.index

    missing = [c for c in spec.columns if c not in raw.columns]
    for key, items in (("persona", spec.persona), ("conditions", spec.conditions), ("questions", spec.questions)):
        for i, item in enumerate(items):
            if item.column in missing:
                problems.append(Problem(f"{key}[{i}].column", f"column {item.column!r} is not in {data_name}"
                                        f"{_columns_hint(cols)}"))
    if missing:
        raise SpecError(origin, problems)

    out = pd.DataFrame(index=index)
    for i, p in enumerate(spec.persona):
        s = raw[p.column].reset_index(drop=True)
        if p.type == "numeric":
            num = pd.to_numeric(s, errors="coerce")
            bad = s[(num.isna() & s.notna()) | np.isinf(num)]
            if len(bad):
                problems.append(Problem(f"persona[{i}]", f"column {p.column!r} is declared numeric (finite numbers) but holds "
                                        f"{_list_bad(bad, index)} in {data_name}"))
            out[p.column] = num.to_numpy(dtype=float)
        else:
            if p.labels:
                _code_type_problem(problems, f"persona[{i}].labels", p.column, list(p.labels), s, data_name)
            # stored numbers stay numbers (also when a file or an arm hands them over as objects)
            num = pd.to_numeric(s.astype(object), errors="coerce")
            all_numbers = num.notna().sum() == s.notna().sum() and not pd.api.types.is_bool_dtype(s)
            if all_numbers and np.isinf(num).any():
                problems.append(Problem(f"persona[{i}]", f"column {p.column!r} holds "
                                        f"{_list_bad(s[np.isinf(num)], index)}: expected finite numbers in {data_name}"))
            out[p.column] = num.to_numpy(dtype=float) if all_numbers else s.to_numpy()
    for key, items in (("conditions", spec.conditions), ("questions", spec.questions)):
        for i, item in enumerate(items):
            codes = item.codes
            where = f"{key}[{i}].{'texts' if key == 'conditions' else 'options'}"
            out[item.column] = _to_codes(problems, where, item.column, codes, raw[item.column].reset_index(drop=True),
                                         index, data_name)
    if problems:
        raise SpecError(origin, problems)
    for c in extra_ok:
        if c in raw.columns and c not in out.columns:
            out[c] = raw[c].to_numpy()
    return out


def _columns_hint(cols: list) -> str:
    shown = ", ".join(map(repr, cols[:12])) + (" ..." if len(cols) > 12 else "")
    hint = f" (its columns: {shown})"
    if len(cols) == 1 and any(d in str(cols[0]) for d in ";\t|"):
        hint += "; the file seems to use another delimiter: set source.sep"
    return hint


def _ids(spec: StudySpec, raw: pd.DataFrame, data_name: str, problems: list[Problem]) -> pd.Index:
    if spec.id is None:
        return pd.RangeIndex(len(raw), name="id")
    if spec.id not in raw.columns:
        problems.append(Problem("id", f"column {spec.id!r} is not in {data_name}{_columns_hint(list(raw.columns))}"))
        return pd.RangeIndex(len(raw), name="id")
    ids = raw[spec.id]
    if ids.isna().any():
        rows = list(np.flatnonzero(ids.isna().to_numpy())[:MAX_LISTED])
        problems.append(Problem("id", f"column {spec.id!r} has missing ids (rows {rows}) in {data_name}"))
    dup = ids[ids.duplicated(keep=False) & ids.notna()]
    if len(dup):
        values = [plain(v) for v in pd.unique(dup)][:MAX_LISTED]
        problems.append(Problem("id", f"column {spec.id!r} must be unique, but {len(pd.unique(dup))} ids repeat "
                                f"(for example {values!r}) in {data_name}"))
    return pd.Index(id_text(ids), name="id", dtype=object)


def id_text(ids: pd.Series) -> np.ndarray:
    """Ids as text, as the spec says (`007` and `7` are two respondents): numbers a format stored
    as numbers are written without a decimal point when whole (7.0 -> '7')."""
    def text(v):
        if v is None or (isinstance(v, float) and np.isnan(v)):
            return v
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.integer, np.floating)):
            return str(v)
        return str(int(v)) if float(v).is_integer() else str(v)
    return np.array([text(v) for v in ids.to_numpy(dtype=object)], dtype=object)


def _code_kind(codes: list[Code]) -> str:
    if all(is_number(c) for c in codes):
        return "number"
    if all(isinstance(c, str) for c in codes):
        return "text"
    return "mixed"


def _code_type_problem(problems, where, column, codes, s: pd.Series, data_name) -> bool:
    """True (and a problem added) when the data's type cannot hold the spec's codes."""
    values = s.dropna()
    if values.empty:
        return False
    kind = _code_kind(codes)
    data_numeric = pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values)
    if kind == "number" and not data_numeric and pd.to_numeric(values, errors="coerce").isna().any():
        examples = [plain(v) for v in pd.unique(values[pd.to_numeric(values, errors="coerce").isna()])][:MAX_LISTED]
        problems.append(Problem(where, f"the codes are numbers ({codes[:MAX_LISTED]!r}) but column {column!r} "
                                f"holds text such as {examples!r} in {data_name}"))
        return True
    if kind == "text" and data_numeric:
        examples = [plain(v) for v in pd.unique(values)][:MAX_LISTED]
        padded = [c for c in codes if c.isdigit() and len(c) > 1 and c.startswith("0")]
        fix = (f"write the codes as the numbers the data hold, without leading zeros (for example {int(padded[0])}, "
               f"not {padded[0]!r})" if padded else "write the codes unquoted")
        problems.append(Problem(where, f"the codes are texts ({codes[:MAX_LISTED]!r}) but column {column!r} "
                                f"holds numbers such as {examples!r} in {data_name}; {fix}"))
        return True
    return False


def _to_codes(problems, where, column, codes: tuple, s: pd.Series, index: pd.Index, data_name) -> pd.Categorical:
    """Map stored values onto the spec's codes; values not among them become a problem."""
    if _code_type_problem(problems, where, column, list(codes), s, data_name):
        return pd.Categorical([None] * len(s), categories=list(codes))
    kind = _code_kind(list(codes))
    present = s.notna().to_numpy()
    if kind == "number":
        values = pd.to_numeric(s, errors="coerce").to_numpy(dtype=float)
        lookup = np.array([float(c) for c in codes])
        match = values[:, None] == lookup[None, :]
    else:
        as_text = s.map(lambda v: None if pd.isna(v) else str(v)).to_numpy()
        lookup = np.array([str(c) for c in codes], dtype=object)
        match = as_text[:, None] == lookup[None, :]
    found = match.any(axis=1)
    bad = present & ~found
    if bad.any():
        bad_values = s[bad]
        problems.append(Problem(where, f"column {column!r} holds {_list_bad(bad_values, index)} that "
                                f"{'is' if bad.sum() == 1 else 'are'} not among the allowed codes "
                                f"{list(codes)!r} in {data_name}"))
    position = np.where(present & found, match.argmax(axis=1), -1)
    return pd.Categorical.from_codes(position, categories=list(codes))


def plain(value: object) -> object:
    """A numpy scalar as the Python value it holds, so messages read 9, not np.int64(9)."""
    return value.item() if isinstance(value, np.generic) else value


def _list_bad(bad: pd.Series, index: pd.Index) -> str:
    rows = bad.index.to_numpy()[:MAX_LISTED]
    where = "id" if index.name == "id" else "row"
    items = ", ".join(f"{plain(bad.loc[r])!r} ({where} {plain(index[r])!r})" for r in rows)
    more = f" and {len(bad) - len(rows)} more" if len(bad) > len(rows) else ""
    return f"value{'s' if len(bad) > 1 else ''} {items}{more}"


# --- subgroups ---------------------------------------------------------------------------


def subgroup_levels(subgroup: Subgroup, frame: pd.DataFrame) -> pd.Series:
    """Each respondent's level of `subgroup` (NaN when in none), computed from `frame`'s own values."""
    values = frame[subgroup.column]
    if subgroup.groups is not None:
        if isinstance(values.dtype, pd.CategoricalDtype):
            values = values.astype(object)
        out = pd.Series(np.nan, index=frame.index, dtype=object)
        for level, codes in subgroup.groups.items():
            member = values.isin(list(codes))
            if any(is_number(c) for c in codes):
                num = pd.to_numeric(values, errors="coerce")
                member |= num.isin([float(c) for c in codes if is_number(c)])
            out[member & out.isna()] = level
        return out
    num = pd.to_numeric(values.astype(object) if isinstance(values.dtype, pd.CategoricalDtype) else values,
                        errors="coerce")
    cut = pd.cut(num, bins=list(subgroup.bins), right=False, labels=list(subgroup.levels))
    return cut.astype(object).where(cut.notna(), np.nan)


def _empty_levels(spec: StudySpec, frame: pd.DataFrame):
    for sg in spec.subgroups:
        counts = subgroup_levels(sg, frame).value_counts()
        for level in sg.levels:
            if counts.get(level, 0) == 0:
                yield sg, level, (f"level {level!r} of column {sg.column!r} has no members in the human data "
                                  f"(levels and counts: {dict((lv, int(counts.get(lv, 0))) for lv in sg.levels)})")


def numeric_frame(spec: StudySpec, frame: pd.DataFrame) -> pd.DataFrame:
    """The frame regressions and rank statistics use: questions as numeric values, the rest as stored."""
    out = frame.copy()
    for q in spec.questions:
        values = q.numeric_values
        out[q.column] = frame[q.column].astype(object).map(values).astype(float)  # unmapped (missing) -> NaN
    for c in spec.conditions:
        col = frame[c.column].astype(object)
        out[c.column] = pd.to_numeric(col, errors="coerce") if all(is_number(x) for x in c.codes) else col
    return out

