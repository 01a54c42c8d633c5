"""Arms: the ways synthetic respondents are produced (LLM base / fine-tuned, baselines).

Each arm is registered by name; `arms: [...]` in the config selects which run. An arm takes
the study, the pilot humans and the evaluation humans' personas and returns a synthetic frame
in the SURVEY_SPEC.md format (one row per twin, `twin_of` = the human's id). The LLM arms
(`base`, `finetuned`) share one loaded model and live in `arms.llm`.
"""

from __future__ import annotations

from typing import Callable

from fidelity_exp.errors import ConfigError

ARMS: dict[str, Callable] = {}


def register(name: str):
    def wrap(fn: Callable) -> Callable:
        ARMS[name] = fn
        return fn

    return wrap


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
