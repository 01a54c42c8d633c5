"""The human pilot (fine-tuning data) and the evaluation humans (whose twins are scored).

The evaluation set is drawn from the respondents not in the pilot, so the two are disjoint by
construction; `Split.__post_init__` asserts it anyway, because everything downstream (honest
metrics, no leakage) rests on it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from fidelity_exp.errors import ConfigError
from fidelity_exp.study.data import Study, subgroup_levels

METHODS = ("random", "stratified")
UNASSIGNED = "(none)"  # the stratum of respondents in no level of the stratifying subgroup


@dataclass(frozen=True)
class Split:
    pilot: pd.Index       # respondent ids, in source order
    evaluation: pd.Index  # respondent ids, in source order

    def __post_init__(self) -> None:
        overlap = self.pilot.intersection(self.evaluation)
        if len(overlap):
            raise AssertionError(f"pilot and evaluation share {len(overlap)} respondents, e.g. {list(overlap[:3])}")

    def ids_frame(self) -> pd.DataFrame:
        """Both sets in one frame (`id`, `set`) for logging."""
        return pd.concat([
            pd.DataFrame({"id": self.pilot, "set": "pilot"}),
            pd.DataFrame({"id": self.evaluation, "set": "evaluation"}),
        ], ignore_index=True)


def draw_split(study: Study, *, method: str = "random", n: int, seed: int = 0, by: str | None = None,
               eval_n: int | None = None) -> Split:
    """Draw `n` pilot respondents (`random`, or `stratified` by the spec subgroup `by`).

    The evaluation set is every other respondent, or a seeded random `eval_n` of them.
    The same arguments always give the same split.
    """
    total = len(study)
    if method not in METHODS:
        raise ConfigError("pilot.method", method, f"expected one of {', '.join(METHODS)}")
    if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 1 or n >= total:
        raise ConfigError("pilot.n", n, f"expected an integer from 1 to {total - 1}: study {study.spec.name!r} has "
                          f"{total} respondents and at least one must remain for evaluation")
    if eval_n is not None and (not isinstance(eval_n, (int, np.integer)) or eval_n < 1):
        raise ConfigError("eval.n", eval_n, "expected a positive integer, or null for all non-pilot respondents")
    rng = np.random.default_rng(seed)
    if method == "random":
        chosen = rng.choice(total, size=n, replace=False)
    else:
        chosen = _stratified(study, rng, n, by)
    in_pilot = np.zeros(total, dtype=bool)
    in_pilot[chosen] = True
    rest = np.flatnonzero(~in_pilot)
    if eval_n is not None and eval_n < len(rest):
        rest = np.sort(rng.choice(rest, size=eval_n, replace=False))
    return Split(pilot=study.ids[np.flatnonzero(in_pilot)], evaluation=study.ids[rest])


def _stratified(study: Study, rng: np.random.Generator, n: int, by: str | None) -> np.ndarray:
    names = [sg.name for sg in study.spec.subgroups]
    if by not in names:
        raise ConfigError("pilot.by", by, f"a stratified pilot needs one of the spec's subgroups "
                          f"({', '.join(names) or 'the spec defines none'})")
    subgroup = next(sg for sg in study.spec.subgroups if sg.name == by)
    levels = subgroup_levels(subgroup, study.frame).fillna(UNASSIGNED).to_numpy()
    strata = pd.unique(levels)
    sizes = np.array([(levels == s).sum() for s in strata])
    # Proportional allocation, rounded by largest remainder so the parts add up to n.
    exact = n * sizes / sizes.sum()
    alloc = np.floor(exact).astype(int)
    alloc[np.argsort(-(exact - alloc), kind="stable")[: n - alloc.sum()]] += 1
    for stratum, size, k in zip(strata, sizes, alloc):
        if k == 0 or k >= size:
            why = "gets no pilot place" if k == 0 else "would have no respondent left for evaluation"
            raise ConfigError("pilot.n", n, f"stratum {stratum!r} of subgroup {by!r} has {size} of {sizes.sum()} "
                              f"respondents and {why}; choose another pilot.n, or pilot=random")
    parts = [rng.choice(np.flatnonzero(levels == s), size=k, replace=False) for s, k in zip(strata, alloc)]
    return np.concatenate(parts)
