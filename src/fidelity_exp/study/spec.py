"""The study spec (../shared/docs/SURVEY_SPEC.md): parsed into frozen dataclasses, checked whole.

`parse_spec(mapping, origin)` checks the spec on its own (keys, types, roles, formulas) and
raises one `SpecError` listing every problem it found. Checks that need the data (columns,
codes, ids, subgroup members) live in `study.data`.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field
from numbers import Number
from typing import Any, Mapping

from fidelity_exp.errors import Problem, SpecError

TOP_LEVEL_KEYS = (
    "name", "version", "source", "id", "intro", "persona", "conditions", "questions",
    "subgroups", "coherence", "regressions",
)
SOURCE_KEYS = {
    "statsmodels": {"required": ("name",), "optional": ()},
    "csv": {"required": ("path",), "optional": ("sep", "encoding")},
    "parquet": {"required": ("path",), "optional": ()},
    "synthetic": {"required": ("name",), "optional": ("n", "seed")},
}
PERSONA_TYPES = ("numeric", "ordinal", "nominal")
QUESTION_TYPES = ("ordinal", "nominal", "binary")
ROLES = ("belief", "action", "other")
FAMILIES = ("ols", "logit", "probit", "mnlogit")
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")   # a spec name: no slash, space or leading dot

Code = Any  # an option code: int or str as written in the spec


def is_number(x: object) -> bool:
    return isinstance(x, Number) and not isinstance(x, bool)


@dataclass(frozen=True)
class PersonaField:
    column: str
    label: str
    type: str
    labels: dict[Code, str] | None = None

    def describe(self, value: object) -> str:
        """The words the prompt uses for a stored value (its label, else the value itself)."""
        if self.labels:
            for code, text in self.labels.items():
                if code == value or (is_number(code) and is_number(value) and float(code) == float(value)):
                    return text
        if is_number(value) and float(value).is_integer():
            return str(int(value))
        return str(value)


@dataclass(frozen=True)
class Condition:
    column: str
    label: str
    texts: dict[Code, str]

    @property
    def codes(self) -> tuple[Code, ...]:
        return tuple(self.texts)


@dataclass(frozen=True)
class Question:
    column: str
    text: str
    type: str
    role: str
    options: dict[Code, str]

    @property
    def codes(self) -> tuple[Code, ...]:
        return tuple(self.options)

    @property
    def numeric_values(self) -> dict[Code, float]:
        """The numeric-value rule: the code when every code is a number, else its 0-based position."""
        if all(is_number(c) for c in self.options):
            return {c: float(c) for c in self.options}
        return {c: float(i) for i, c in enumerate(self.options)}

    @property
    def is_ordered(self) -> bool:
        """Ordinal and binary questions have a scale order (the listed order of options)."""
        return self.type in ("ordinal", "binary")


@dataclass(frozen=True)
class Subgroup:
    name: str
    column: str
    groups: dict[str, tuple[Code, ...]] | None = None
    bins: tuple[float, ...] | None = None

    @property
    def levels(self) -> tuple[str, ...]:
        if self.groups is not None:
            return tuple(self.groups)
        edges = [_fmt_edge(b) for b in self.bins]
        return tuple(f"[{lo},{hi})" for lo, hi in zip(edges[:-1], edges[1:]))


def _fmt_edge(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


@dataclass(frozen=True)
class CoherencePair:
    belief: str
    action: str
    contradiction_belief: tuple[Code, ...] | None = None
    contradiction_action: tuple[Code, ...] | None = None

    @property
    def key(self) -> str:
        return f"{self.belief}__{self.action}"


@dataclass(frozen=True)
class Regression:
    name: str
    formula: str
    family: str
    cov_type: str | None = None

    @property
    def variables(self) -> tuple[str, ...]:
        return formula_variables(self.formula)


@dataclass(frozen=True)
class StudySpec:
    name: str
    version: int
    source: dict[str, Any]
    persona: tuple[PersonaField, ...]
    questions: tuple[Question, ...]
    id: str | None = None
    intro: str | None = None
    conditions: tuple[Condition, ...] = ()
    subgroups: tuple[Subgroup, ...] = ()
    coherence: tuple[CoherencePair, ...] = ()
    regressions: tuple[Regression, ...] = ()
    origin: str = field(default="<spec>", compare=False)

    @property
    def question_columns(self) -> list[str]:
        return [q.column for q in self.questions]

    @property
    def persona_columns(self) -> list[str]:
        return [p.column for p in self.persona]

    @property
    def condition_columns(self) -> list[str]:
        return [c.column for c in self.conditions]

    @property
    def given_columns(self) -> list[str]:
        """Columns the model is given (persona, conditions), as opposed to asked."""
        return self.persona_columns + self.condition_columns

    @property
    def columns(self) -> list[str]:
        return self.given_columns + self.question_columns

    @property
    def text_columns(self) -> tuple[str, ...]:
        """Columns a CSV reader must keep as text: the id (`007` is not `7`) and every column whose
        codes are all texts (codes '01'..'12' would otherwise be read as the numbers 1..12)."""
        coded = [(p.column, tuple(p.labels or ())) for p in self.persona]
        coded += [(c.column, c.codes) for c in self.conditions] + [(q.column, q.codes) for q in self.questions]
        texts = [column for column, codes in coded if codes and all(isinstance(c, str) for c in codes)]
        return tuple(([self.id] if self.id else []) + texts)

    def question(self, column: str) -> Question:
        for q in self.questions:
            if q.column == column:
                return q
        raise KeyError(column)


# --- formula variables -------------------------------------------------------------------

_QUOTED = re.compile(r"""Q\(\s*(['"])(.+?)\1\s*\)""")


def formula_variables(formula: str) -> tuple[str, ...]:
    """Data columns a statsmodels (patsy) formula refers to, in order of appearance.

    >>> formula_variables('vote ~ PID + C(educ) + np.log(age) + Q("self.LR")')
    ('vote', 'PID', 'educ', 'age', 'self.LR')
    """
    quoted = [m.group(2) for m in _QUOTED.finditer(formula)]
    text = _QUOTED.sub("__quoted__", formula)
    # patsy's operators that are not Python's: '~' separates sides, ':' is an interaction.
    text = text.replace("~", ",").replace(":", "*")
    if text.lstrip().startswith(","):
        text = "0" + text
    tree = ast.parse(f"({text})", mode="eval")
    called, names = set(), []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            fn = node.func
            while isinstance(fn, ast.Attribute):
                fn = fn.value
            if isinstance(fn, ast.Name):
                called.add(id(fn))
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            called.add(id(node.value))  # a module such as np in np.log
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and id(node) not in called and node.id != "__quoted__":
            names.append((node.col_offset, node.id))
    ordered = [n for _, n in sorted(names)]
    out: list[str] = []
    for n in ordered + quoted:
        if n not in out:
            out.append(n)
    return tuple(out)


# --- parsing -----------------------------------------------------------------------------


class _Checker:
    """Collects problems while parsing, so the user sees all of them at once."""

    def __init__(self) -> None:
        self.problems: list[Problem] = []

    def add(self, key: str, message: str) -> None:
        self.problems.append(Problem(key, message))

    def text(self, m: Mapping, key: str, where: str, *, required: bool = True, default=None):
        v = m.get(key, default)
        if v is None:
            if required:
                self.add(f"{where}.{key}" if where else key, "is required (a text), but is missing")
            return default
        if not isinstance(v, str) or not v.strip():
            self.add(f"{where}.{key}" if where else key, f"expected a non-empty text, found {v!r}")
            return default
        return v

    def choice(self, m: Mapping, key: str, where: str, allowed: tuple[str, ...], default=None):
        v = m.get(key, default)
        if v not in allowed:
            found = "nothing" if v is None else repr(v)
            self.add(f"{where}.{key}", f"expected one of {', '.join(allowed)}; found {found}")
            return None
        return v

    def unknown_keys(self, m: Mapping, allowed, where: str) -> None:
        for k in m:
            if k not in allowed:
                self.add(f"{where}.{k}" if where else str(k),
                         f"unknown key (expected one of: {', '.join(allowed)})")

    def mapping(self, v, where: str, *, what: str = "a mapping") -> dict | None:
        if not isinstance(v, Mapping):
            self.add(where, f"expected {what}, found {type(v).__name__} {v!r}")
            return None
        return dict(v)

    def codes_map(self, v, where: str) -> dict | None:
        """A non-empty {code: text} mapping whose codes are integers or texts."""
        m = self.mapping(v, where, what="a non-empty mapping {code: text}")
        if m is None:
            return None
        if not m:
            self.add(where, "expected at least one {code: text} entry, found none")
            return None
        for code, text in m.items():
            if isinstance(code, bool):
                self.add(f"{where}.{code}", "a code read as a boolean; quote it in YAML ('yes': ...)")
            elif not (isinstance(code, (int, str)) or is_number(code)):
                self.add(f"{where}.{code}", f"a code must be an integer or a text, found {type(code).__name__}")
            if not isinstance(text, str):
                self.add(f"{where}.{code}", f"expected the text shown for this code, found {text!r}")
        return m


def parse_spec(raw: Mapping, origin: str = "<spec>") -> StudySpec:
    """Check a spec mapping and build a `StudySpec`; raise `SpecError` with every problem."""
    spec, problems = check_spec(raw, origin)
    if problems:
        raise SpecError(origin, problems)
    return spec


def check_spec(raw: Mapping, origin: str = "<spec>") -> tuple[StudySpec | None, list[Problem]]:
    """Every problem of a spec mapping, and the spec built from its sound parts (None when a
    required part is unusable), so that the data can be checked too before reporting."""
    ck = _Checker()
    if not isinstance(raw, Mapping):
        return None, [Problem("", f"expected a mapping of spec keys, found {type(raw).__name__}")]
    ck.unknown_keys(raw, TOP_LEVEL_KEYS, "")

    name = ck.text(raw, "name", "")
    if name is not None and not NAME_RE.fullmatch(name):
        ck.add("name", f"expected a short identifier (letters, digits, '_', '-', '.'; it names runs, the MLflow "
                       f"experiment and registered models), found {name!r}")
        name = None
    version = raw.get("version")
    if not (isinstance(version, int) and not isinstance(version, bool)):
        ck.add("version", f"expected an integer (bump it when a change alters results), found {version!r}")
    source = _parse_source(ck, raw.get("source"))
    id_col = raw.get("id")
    if id_col is not None and not isinstance(id_col, str):
        ck.add("id", f"expected a column name or null (row number), found {id_col!r}")
    intro = ck.text(raw, "intro", "", required=False)

    persona = tuple(_parse_list(ck, raw, "persona", _parse_persona, required=True))
    conditions = tuple(_parse_list(ck, raw, "conditions", _parse_condition, required=False))
    questions = tuple(_parse_list(ck, raw, "questions", _parse_question, required=True))

    _check_columns_once(ck, persona, conditions, questions)
    # Columns the spec declares, counting entries that are broken in other ways, so that one
    # mistake (say a question's type) is reported once rather than again in every formula.
    declared = _declared_columns(raw)
    known = declared | {p.column for p in persona} | {c.column for c in conditions} | {q.column for q in questions}
    qmap = {q.column: q for q in questions}
    broken_questions = _declared_columns(raw, ("questions",)) - set(qmap)

    subgroups = tuple(_parse_subgroups(ck, raw.get("subgroups"), known))
    coherence = tuple(_parse_list(ck, raw, "coherence", lambda c, m, w: _parse_pair(c, m, w, qmap, broken_questions),
                                  required=False))
    regressions = tuple(_parse_regressions(ck, raw.get("regressions"), known))
    _check_key_names(ck, persona, conditions, questions, subgroups, coherence, regressions)

    usable = name is not None and source.get("kind") in SOURCE_KEYS and persona and questions and not any(
        p.key.startswith(("source", "id", "persona", "conditions", "questions")) for p in ck.problems)
    spec = StudySpec(
        name=name, version=version, source=source, id=id_col, intro=intro, persona=persona,
        conditions=conditions, questions=questions, subgroups=subgroups, coherence=coherence,
        regressions=regressions, origin=origin,
    ) if usable else None
    return spec, ck.problems


def _parse_source(ck: _Checker, v) -> dict:
    m = ck.mapping(v, "source", what="a mapping such as {kind: csv, path: data.csv}") if v is not None else None
    if v is None:
        ck.add("source", "is required: where the human responses come from")
    if m is None:
        return {}
    kind = ck.choice(m, "kind", "source", tuple(SOURCE_KEYS))
    if kind is None:
        return m
    allowed = ("kind",) + SOURCE_KEYS[kind]["required"] + SOURCE_KEYS[kind]["optional"]
    ck.unknown_keys(m, allowed, "source")
    for key in SOURCE_KEYS[kind]["required"]:
        ck.text(m, key, "source")
    if kind == "synthetic":
        for key in ("n", "seed"):
            x = m.get(key)
            if x is not None and not (isinstance(x, int) and not isinstance(x, bool) and x >= (1 if key == "n" else 0)):
                ck.add(f"source.{key}", f"expected an integer >= {1 if key == 'n' else 0}, found {x!r}")
    return m


def _parse_list(ck: _Checker, raw: Mapping, key: str, parse_one, *, required: bool):
    v = raw.get(key)
    if v is None:
        if required:
            ck.add(key, "is required (a non-empty list)")
        return []
    if isinstance(v, (str, bytes)) or not hasattr(v, "__iter__") or isinstance(v, Mapping):
        ck.add(key, f"expected a list, found {type(v).__name__}")
        return []
    items = list(v)
    if required and not items:
        ck.add(key, "expected at least one entry, found an empty list")
    out = []
    for i, item in enumerate(items):
        where = f"{key}[{i}]"
        m = ck.mapping(item, where)
        if m is not None:
            parsed = parse_one(ck, m, where)
            if parsed is not None:
                out.append(parsed)
    return out


def _parse_persona(ck: _Checker, m: dict, where: str) -> PersonaField | None:
    ck.unknown_keys(m, ("column", "label", "type", "labels"), where)
    column = ck.text(m, "column", where)
    label = ck.text(m, "label", where, required=False, default=column)
    ptype = ck.choice(m, "type", where, PERSONA_TYPES)
    labels = ck.codes_map(m["labels"], f"{where}.labels") if m.get("labels") is not None else None
    if column is None or ptype is None:
        return None
    return PersonaField(column, label or column, ptype, labels)


def _parse_condition(ck: _Checker, m: dict, where: str) -> Condition | None:
    ck.unknown_keys(m, ("column", "label", "texts"), where)
    column = ck.text(m, "column", where)
    label = ck.text(m, "label", where, required=False, default=column)
    texts = ck.codes_map(m.get("texts"), f"{where}.texts")
    if column is None or texts is None:
        return None
    return Condition(column, label or column, texts)


def _parse_question(ck: _Checker, m: dict, where: str) -> Question | None:
    ck.unknown_keys(m, ("column", "text", "type", "role", "options"), where)
    column = ck.text(m, "column", where)
    text = ck.text(m, "text", where)
    qtype = ck.choice(m, "type", where, QUESTION_TYPES)
    role = ck.choice(m, "role", where, ROLES, default="other")
    options = ck.codes_map(m.get("options"), f"{where}.options")
    if options is not None and qtype == "binary" and len(options) != 2:
        ck.add(f"{where}.options", f"a binary question has exactly 2 options, found {len(options)}")
    if options is not None and len(options) < 2:
        ck.add(f"{where}.options", f"a question needs at least 2 options to choose from, found {len(options)}")
    if None in (column, text, qtype, role, options):
        return None
    return Question(column, text, qtype, role, options)


def _check_columns_once(ck: _Checker, persona, conditions, questions) -> None:
    seen: dict[str, str] = {}
    for kind, items in (("persona", persona), ("conditions", conditions), ("questions", questions)):
        for i, item in enumerate(items):
            col = item.column
            if col in seen:
                first = seen[col]
                msg = (f"column {col!r} is already used in {first}; a column is either given "
                       f"(persona/conditions) or asked (questions), once")
                ck.add(f"{kind}[{i}].column", msg)
            else:
                seen[col] = kind


def _check_key_names(ck: _Checker, persona, conditions, questions, subgroups, coherence, regressions) -> None:
    """Every name that becomes part of a metric key, checked where it is born: distinct once
    written in a key, not a word keys are made of, within MLflow's limits (registry.name_problems)."""
    from fidelity_exp import metrics   # noqa: F401 - every family registered: their key words are reserved
    from fidelity_exp.inference import regressions as _rectified  # noqa: F401 - and the rectified estimates' words
    from fidelity_exp.metrics.registry import name_problems

    columns = [(f"{kind}[{i}].column", item.column) for kind, items in
               (("persona", persona), ("conditions", conditions), ("questions", questions))
               for i, item in enumerate(items)]
    kinds = [(columns, "columns' metrics"), ([(f"subgroups.{sg.name}", sg.name) for sg in subgroups], "subgroups"),
             ([(f"regressions.{r.name}", r.name) for r in regressions], "regressions")]
    kinds += [([(f"subgroups.{sg.name}.groups.{level}", level) for level in sg.levels], "levels")
              for sg in subgroups if sg.groups is not None]
    for names, what in kinds:
        for where, problem in name_problems(names, what):
            ck.add(where, problem)
    pairs: dict[str, int] = {}
    for i, pair in enumerate(coherence):
        if pair.key in pairs:
            ck.add(f"coherence[{i}]", f"the pair {pair.belief} -> {pair.action} is already coherence[{pairs[pair.key]}]; "
                                      "each pair once (its metrics would merge)")
        pairs.setdefault(pair.key, i)


def _parse_subgroups(ck: _Checker, v, known: set[str]):
    if v is None:
        return []
    m = ck.mapping(v, "subgroups", what="a mapping {name: {column, groups | bins}}")
    if m is None:
        return []
    out = []
    for name, sg in m.items():
        where = f"subgroups.{name}"
        sgm = ck.mapping(sg, where)
        if sgm is None:
            continue
        ck.unknown_keys(sgm, ("column", "groups", "bins"), where)
        column = ck.text(sgm, "column", where)
        if column is not None and column not in known:
            ck.add(f"{where}.column", f"{column!r} is not a persona, condition or question column of this "
                                      f"spec (known: {', '.join(sorted(known))})")
        groups, bins = sgm.get("groups"), sgm.get("bins")
        if (groups is None) == (bins is None):
            ck.add(where, "expected exactly one of 'groups' (levels from listed codes) or 'bins' (numeric edges)")
            continue
        if groups is not None:
            gm = ck.mapping(groups, f"{where}.groups", what="a mapping {level: [codes]}")
            if gm is None:
                continue
            parsed = {}
            for level, codes in gm.items():
                if isinstance(codes, (str, bytes)) or not hasattr(codes, "__iter__"):
                    codes = [codes]
                parsed[str(level)] = tuple(codes)
                if not parsed[str(level)]:
                    ck.add(f"{where}.groups.{level}", "expected at least one code, found none")
            if column is not None:
                out.append(Subgroup(str(name), column, groups=parsed))
        else:
            edges = list(bins) if hasattr(bins, "__iter__") and not isinstance(bins, str) else None
            if not edges or len(edges) < 2 or not all(is_number(b) for b in edges) or any(
                b >= a2 for b, a2 in zip(edges[:-1], edges[1:])
            ):
                ck.add(f"{where}.bins", f"expected at least 2 increasing numbers, found {bins!r}")
                continue
            if column is not None:
                out.append(Subgroup(str(name), column, bins=tuple(float(b) for b in edges)))
    return out


def _declared_columns(raw: Mapping, keys=("persona", "conditions", "questions")) -> set[str]:
    out = set()
    for key in keys:
        items = raw.get(key)
        if isinstance(items, (list, tuple)):
            out |= {m["column"] for m in items if isinstance(m, Mapping) and isinstance(m.get("column"), str)}
    return out


def _parse_pair(ck: _Checker, m: dict, where: str, qmap: dict[str, Question], broken: set[str]) -> CoherencePair | None:
    ck.unknown_keys(m, ("belief", "action", "contradiction"), where)
    belief, action = ck.text(m, "belief", where), ck.text(m, "action", where)
    for key, col, role in (("belief", belief, "belief"), ("action", action, "action")):
        if col is None or col in broken:  # already reported where the question is defined
            continue
        q = qmap.get(col)
        if q is None:
            ck.add(f"{where}.{key}", f"{col!r} is not a question of this spec (questions: {', '.join(qmap)})")
        elif q.role != role:
            ck.add(f"{where}.{key}", f"question {col!r} has role {q.role!r}; expected role {role!r}")
    cb = ca = None
    if m.get("contradiction") is not None:
        cm = ck.mapping(m["contradiction"], f"{where}.contradiction", what="a mapping {belief: [codes], action: [codes]}")
        if cm is not None:
            ck.unknown_keys(cm, ("belief", "action"), f"{where}.contradiction")
            cb, ca = _codes_in(ck, cm, "belief", belief, qmap, where), _codes_in(ck, cm, "action", action, qmap, where)
    if belief is None or action is None:
        return None
    return CoherencePair(belief, action, cb, ca)


def _codes_in(ck: _Checker, cm: Mapping, side: str, column, qmap, where) -> tuple | None:
    codes = cm.get(side)
    if codes is None:
        ck.add(f"{where}.contradiction.{side}", "is required: the list of codes")
        return None
    codes = tuple(codes) if hasattr(codes, "__iter__") and not isinstance(codes, str) else (codes,)
    q = qmap.get(column)
    if q is not None:
        bad = [c for c in codes if c not in q.options]
        if bad:
            ck.add(f"{where}.contradiction.{side}",
                   f"codes {bad!r} are not options of {column!r} (options: {list(q.options)!r})")
    return codes


def _parse_regressions(ck: _Checker, v, known: set[str]):
    if v is None:
        return []
    m = ck.mapping(v, "regressions", what="a mapping {name: {formula, family}}")
    if m is None:
        return []
    out = []
    for name, r in m.items():
        where = f"regressions.{name}"
        rm = ck.mapping(r, where)
        if rm is None:
            continue
        ck.unknown_keys(rm, ("formula", "family", "cov_type"), where)
        formula = ck.text(rm, "formula", where)
        family = ck.choice(rm, "family", where, FAMILIES)
        cov_type = rm.get("cov_type")
        if cov_type is not None and not isinstance(cov_type, str):
            ck.add(f"{where}.cov_type", f"expected a statsmodels cov_type such as 'HC1', found {cov_type!r}")
        if formula is None:
            continue
        if formula.count("~") != 1:
            ck.add(f"{where}.formula", f"expected 'outcome ~ terms', found {formula!r}")
            continue
        try:
            variables = formula_variables(formula)
        except SyntaxError:
            ck.add(f"{where}.formula", f"cannot be read as a statsmodels formula: {formula!r}")
            continue
        unknown = [x for x in variables if x not in known]
        if unknown:
            ck.add(f"{where}.formula", f"names {', '.join(map(repr, unknown))}, which "
                   f"{'is not a column' if len(unknown) == 1 else 'are not columns'} of this spec "
                   f"(persona, conditions, questions: {', '.join(sorted(known))})")
        if family is not None:
            out.append(Regression(str(name), formula, family, cov_type))
    return out
