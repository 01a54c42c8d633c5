"""Getting a spec from where users write it: a YAML file, or the Hydra `data` config group.

Hydra's YAML (like PyYAML's default) reads unquoted `yes`/`no`/`on`/`off` as booleans, so
SURVEY_SPEC.md's `options: {no: "No", yes: "Yes"}` would arrive as `{False: .., True: ..}`.
We read the spec file again with a loader that keeps those words as text (as YAML 1.2 does)
and put the words back wherever the composed config has such a boolean.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from fidelity_exp.errors import Problem, SpecError
from fidelity_exp.study.spec import check_spec, parse_spec


MAX_NODES = 100_000   # values in a YAML document once its aliases are expanded (real configs: a few thousand)


class AliasBomb(yaml.YAMLError):
    """A YAML document whose aliases expand beyond `MAX_NODES` values."""


class Bounded:
    """A loader mixin that refuses, before building anything, a document whose aliases expand
    beyond `MAX_NODES` values (a 1 KB file of nested anchors can expand to billions)."""

    def construct_document(self, node):
        _expanded_size(node)
        return super().construct_document(node)


def _expanded_size(root) -> int:
    sizes: dict[int, int] = {}
    open_: set[int] = set()

    def size(node) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in open_:
            raise AliasBomb(f"{node.start_mark}: a recursive alias; YAML configs here must be trees")
        open_.add(key)
        children = [x for pair in node.value for x in pair] if isinstance(node, yaml.MappingNode) else (
            node.value if isinstance(node, yaml.SequenceNode) else [])
        total = 1
        for child in children:
            total += size(child)
            if total > MAX_NODES:
                raise AliasBomb(f"{root.start_mark}: its aliases (*name) expand to more than {MAX_NODES:,} values; "
                                "refused (a config this large is almost certainly an alias bomb)")
        open_.discard(key)
        sizes[key] = total
        return total

    return size(root)


def bound_omegaconf_yaml() -> None:
    """Every YAML file Hydra reads (through OmegaConf's loader) gets the same bound."""
    from omegaconf import _utils

    if getattr(_utils.get_yaml_loader, "bounded", False):
        return
    unbounded = _utils.get_yaml_loader

    def get_yaml_loader():
        return type("BoundedOmegaConfLoader", (Bounded, unbounded()), {})

    get_yaml_loader.bounded = True
    _utils.get_yaml_loader = get_yaml_loader


class _SpecLoader(Bounded, yaml.SafeLoader):
    """A safe loader whose only booleans are true/false (YAML 1.2), not yes/no/on/off."""


_SpecLoader.yaml_implicit_resolvers = {
    k: [(tag, rx) for tag, rx in v if tag != "tag:yaml.org,2002:bool"]
    for k, v in yaml.SafeLoader.yaml_implicit_resolvers.copy().items()
}
_SpecLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)
_YAML11_TRUE = {"yes", "on", "y", "true"}
_YAML11_FALSE = {"no", "off", "n", "false"}


def read_yaml(path: str | Path) -> Any:
    """Parse a YAML file safely; a syntax error becomes a `SpecError` naming the file and line."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise SpecError(str(path), [Problem("", f"cannot be read: {e.strerror}")]) from None
    try:
        return yaml.load(text, Loader=_SpecLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise SpecError(str(path), [Problem(where, f"is not valid YAML: {getattr(e, 'problem', e)}")]) from None


def load_spec_file(path: str | Path, *, strict: bool = True):
    """Load and check a spec from a YAML file (outside Hydra).

    strict: return the `StudySpec` or raise `SpecError`; else return `(spec or None, problems)`
    so that `load_study` can add the data's problems to the same report.
    """
    raw = read_yaml(path)
    if isinstance(raw, dict):
        raw.pop("defaults", None)
    return parse_spec(raw, origin=str(path)) if strict else check_spec(raw, origin=str(path))


def spec_from_config(data_cfg: Any, origin: str, raw_file: str | Path | None = None, *, strict: bool = True):
    """Build a `StudySpec` from the composed `data` config node (overrides applied); `strict` as
    for `load_spec_file`."""
    from omegaconf import DictConfig, OmegaConf

    if isinstance(data_cfg, DictConfig):
        try:
            data = OmegaConf.to_container(data_cfg, resolve=True)
        except Exception as e:  # an interpolation error in the user's spec
            raise SpecError(origin, [Problem("", f"cannot be resolved: {e}")]) from None
    else:
        data = data_cfg
    if raw_file is not None and Path(raw_file).is_file():
        raw = read_yaml(raw_file)
        data = restore_yaml11_words(data, raw)
    return parse_spec(data, origin=origin) if strict else check_spec(data, origin=origin)


def restore_yaml11_words(composed: Any, raw: Any) -> Any:
    """Where `composed` holds a YAML-1.1 boolean and `raw` the word it came from, use the word."""
    if isinstance(composed, dict):
        raw_d = raw if isinstance(raw, dict) else {}
        out = {}
        for k, v in composed.items():
            key = _word_for(k, raw_d.keys()) if isinstance(k, bool) else k
            out[key] = restore_yaml11_words(v, raw_d.get(key, raw_d.get(k)))
        return out
    if isinstance(composed, list):
        raw_l = raw if isinstance(raw, list) and len(raw) == len(composed) else [None] * len(composed)
        return [restore_yaml11_words(v, r) for v, r in zip(composed, raw_l)]
    if isinstance(composed, bool) and isinstance(raw, str) and raw.lower() in (_YAML11_TRUE | _YAML11_FALSE):
        return raw
    return composed


def _word_for(value: bool, candidates) -> Any:
    words = _YAML11_TRUE if value else _YAML11_FALSE
    for c in candidates:
        if isinstance(c, str) and c.lower() in words:
            return c
    return value


def config_file(group: str, choice: str) -> str | None:
    """The file Hydra composed `group=choice` from (for messages and re-reading), if known.

    Hydra records every config source of the run, user searchpath folders included, in
    `hydra.runtime.config_sources`; the first source that has it wins, as in Hydra's own lookup.
    """
    try:
        from hydra.core.hydra_config import HydraConfig

        if not HydraConfig.initialized():
            return None
        sources = HydraConfig.get().runtime.config_sources
    except Exception:  # pragma: no cover - message quality only; never fail a run for it
        return None
    for source in sources:
        if source.schema == "file":
            candidate = Path(source.path) / group / f"{choice}.yaml"
            if candidate.is_file():
                return str(candidate)
        elif source.schema == "pkg":
            import importlib.resources as resources

            try:
                root = resources.files(source.path)
            except (ModuleNotFoundError, TypeError):
                continue
            candidate = root.joinpath(group, f"{choice}.yaml")
            if candidate.is_file():
                return str(candidate)
    return None


def study_from_file(path: str | Path):
    """Spec file -> checked `Study`; one `SpecError` lists the spec's and the data's problems."""
    from fidelity_exp.study.data import load_study

    spec, problems = load_spec_file(path, strict=False)
    return load_study(spec, problems, origin=str(path))
