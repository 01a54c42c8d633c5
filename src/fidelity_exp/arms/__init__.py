"""Arms: the ways synthetic respondents are produced (LLM base / fine-tuned, baselines).

Each arm is registered by name; `arms: [...]` in the config selects which run. An arm takes
the study, the pilot humans and the evaluation humans' personas and returns a synthetic frame
in the SURVEY_SPEC.md format (one row per twin, `twin_of` = the human's id). The LLM arms
(`base`, `finetuned`) share one loaded model and live in `arms.llm`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import pandas as pd

from fidelity_exp.errors import ConfigError

if TYPE_CHECKING:
    from fidelity_exp.study import Split, Study

ARMS: dict[str, Callable] = {}


def register(name: str):
    def wrap(fn: Callable) -> Callable:
        ARMS[name] = fn
        return fn

    return wrap


def twin_base(study: "Study", split: "Split") -> pd.DataFrame:
    """The twins' given columns (persona, conditions) copied from their humans, plus `twin_of`:
    what every arm starts from before its twins answer."""
    out = study.frame.loc[split.evaluation, study.spec.given_columns].reset_index(drop=True)
    for c in study.spec.condition_columns:  # the stored codes, not the canonical categorical
        out[c] = out[c].astype(object)
    out.insert(0, "twin_of", list(split.evaluation))
    return out


LLM_ARMS = ("base", "finetuned")  # run by arms.llm, which shares one loaded model between them


def check_arms(names) -> list[str]:
    """The configured arm names, each known, in config order; else a `ConfigError` listing the known ones."""
    names = list(names or [])
    for name in names:
        if name not in ARMS and name not in LLM_ARMS:
            known = ", ".join([*LLM_ARMS, *sorted(ARMS)])
            raise ConfigError("arms", name, f"unknown arm (known arms: {known})")
    if len(set(names)) != len(names):
        raise ConfigError("arms", names, "each arm may be listed once")
    return names


# Registering the built-in arms (imported last: they use `register` above).
from fidelity_exp.arms import baselines  # noqa: E402,F401
