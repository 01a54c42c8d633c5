"""Who is who: the human pilot (fine-tuning data), the validation humans (for tuning, optional)
and the evaluation humans (whose twins are scored and reported).

When `eval_n` is given, the evaluation humans are drawn *first*, from everyone, with their own
seed: pilots of every size and seed are then scored on the same humans (the pilot-size sweep
relies on it). The pilot is drawn from the rest, and the validation humans from what is left
after the pilot ("the pilot side"): tuning on them never looks at an evaluation human. Without
`eval_n`, the evaluation humans are everyone not in the pilot or the validation set. The three
sets are disjoint by construction; `Split.__post_init__` asserts it anyway, because everything
downstream (honest metrics, no leakage) rests on it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Optional

import numpy as np
import pandas as pd

from fidelity_exp.errors import ConfigError
from fidelity_exp.settings import Checked, SEED_MAX, group, option, seed_option
from fidelity_exp.study.data import Study, subgroup_levels

METHODS = ("random", "stratified")
UNASSIGNED = "(none)"  # the stratum of respondents in no level of the stratifying subgroup


@dataclass(frozen=True)
class Split:
    pilot: pd.Index       # respondent ids, in source order
    evaluation: pd.Index  # respondent ids, in source order
    validation: pd.Index = field(default_factory=lambda: pd.Index([]))  # held out from the pilot side
    # Rectification folds (pilot.finetune_fraction < 1: one fold; pilot.crossfit_folds = K: K
    # folds covering the pilot). Fold k's humans rectify; the model that answers for them is
    # fine-tuned on the rest of the pilot. Empty: the whole pilot fine-tunes (the paper's design).
    folds: tuple[pd.Index, ...] = ()

    def __post_init__(self) -> None:
        for (a, x), (b, y) in [(("pilot", self.pilot), ("evaluation", self.evaluation)),
                               (("pilot", self.pilot), ("validation", self.validation)),
                               (("validation", self.validation), ("evaluation", self.evaluation))]:
            overlap = x.intersection(y)
            if len(overlap):
                raise AssertionError(f"{a} and {b} share {len(overlap)} respondents, e.g. {list(overlap[:3])}")
        for fold in self.folds:
            if len(fold.difference(self.pilot)):
                raise AssertionError("a rectification fold holds respondents outside the pilot")

    def finetune_ids(self, k: int) -> pd.Index:
        """The pilot humans fold k's model is fine-tuned on (the whole pilot without folds)."""
        return self.pilot.difference(self.folds[k], sort=False) if self.folds else self.pilot

    def ids_frame(self) -> pd.DataFrame:
        """All sets in one frame (`id`, `set`, and for pilot humans their rectification `fold`)."""
        frame = pd.concat([pd.DataFrame({"id": ids, "set": name}) for name, ids in
                           (("pilot", self.pilot), ("validation", self.validation), ("evaluation", self.evaluation))],
                          ignore_index=True)
        fold_of = {i: k for k, fold in enumerate(self.folds) for i in fold}
        frame["fold"] = [fold_of.get(i, -1) for i in frame["id"]]
        return frame

    def scored_on(self, which: str) -> Split:
        """The split whose `evaluation` is the set to simulate and score: `evaluation` or `validation`."""
        if which == "evaluation":
            return self
        if which != "validation":
            raise ConfigError("score_on", which, "expected evaluation or validation")
        if not len(self.validation):
            raise ConfigError("score_on", which, "needs validation humans: set validation.n to a positive number")
        # The evaluation humans drop out entirely: nothing downstream can touch them.
        return Split(pilot=self.pilot, evaluation=self.validation, folds=self.folds)

    def with_folds(self, *, finetune_fraction: float = 1.0, crossfit_folds: int = 1, seed: int = 0) -> Split:
        """Split the pilot into fine-tuning and rectification humans (see `folds`)."""
        n = len(self.pilot)
        if not isinstance(crossfit_folds, (int, np.integer)) or isinstance(crossfit_folds, bool) \
                or not 1 <= crossfit_folds <= n // 2:
            raise ConfigError("pilot.crossfit_folds", crossfit_folds, f"expected an integer from 1 (no cross-fitting) "
                              f"to {n // 2} (every fold needs at least 2 of the {n} pilot humans)")
        if isinstance(finetune_fraction, bool) or not isinstance(finetune_fraction, (int, float)) \
                or not 0 < finetune_fraction <= 1:
            raise ConfigError("pilot.finetune_fraction", finetune_fraction, "expected a number in (0, 1]: the share "
                              "of the pilot that fine-tunes (1: all of it, nothing is rectified)")
        rng = np.random.default_rng([seed, 3])
        order = self.pilot[rng.permutation(n)]
        if crossfit_folds >= 2:
            if finetune_fraction != 1:
                raise ConfigError("pilot.finetune_fraction", finetune_fraction, "with pilot.crossfit_folds >= 2 every "
                                  "pilot human rectifies once and fine-tunes the other folds' models: leave it at 1")
            folds = tuple(self.pilot[self.pilot.isin(part)] for part in np.array_split(order, crossfit_folds))
        elif finetune_fraction < 1:
            k = n - int(round(finetune_fraction * n))
            if k < 2 or k == n:
                raise ConfigError("pilot.finetune_fraction", finetune_fraction, f"leaves {n - k} of {n} pilot humans "
                                  f"to fine-tune and {k} to rectify: each part needs at least {2 if k < 2 else 1}")
            folds = (self.pilot[self.pilot.isin(order[:k])],)
        else:
            folds = ()
        return Split(pilot=self.pilot, evaluation=self.evaluation, validation=self.validation, folds=folds)


@group("pilot")
@dataclass
class PilotSettings(Checked):
    """The `pilot` group (conf/pilot/*.yaml). `n`'s upper bound depends on the study: `draw_split`
    checks it against the respondents there are."""

    method: str = option("random", one_of=METHODS)
    n: int = 100
    seed: int = seed_option()
    by: Optional[str] = None
    finetune_fraction: float = option(1.0, gt=0, le=1, what="a share of the pilot in (0, 1] (1: all of it "
                                      "fine-tunes)")
    crossfit_folds: int = option(1, ge=1, what="an integer >= 1 (1: no cross-fitting)")

    def check(self) -> None:
        if self.method == "random" and self.by is not None:
            raise ConfigError("by", self.by, "is read by pilot=stratified only; choose pilot=stratified, or leave "
                              "pilot.by null for a simple random pilot")


@group("eval")
@dataclass
class EvalSettings(Checked):
    """`eval`: how many evaluation humans (null: everyone not in the pilot), drawn with which seed."""

    n: Optional[int] = option(None, ge=1, nullable=True,
                              what="a positive integer, or null for all non-pilot respondents")
    seed: Optional[int] = option(None, ge=0, le=SEED_MAX, nullable=True, what=f"a seed from 0 to {SEED_MAX}")


@group("validation")
@dataclass
class ValidationSettings(Checked):
    """`validation`: humans held out from the pilot side for tuning."""

    n: int = option(0, ge=0, what="0 (no validation humans) or a positive integer")


@dataclass(frozen=True)
class SplitSettings:
    """Who is who, as the config says it: the `pilot` group, `eval`, `validation` and `score_on`.
    Read here and nowhere else; `draw` gives the split the run simulates and scores."""

    method: str = "random"
    n: int = 100
    seed: int = 0
    by: str | None = None
    eval_n: int | None = None
    eval_seed: int | None = None
    validation_n: int = 0
    finetune_fraction: float = 1.0   # below 1: that share fine-tunes, the rest rectifies
    crossfit_folds: int = 1          # 2 or more: cross-fitted rectification folds
    score_on: str = "evaluation"     # or "validation"

    RECTIFY_KEYS: ClassVar[tuple[str, ...]] = ("pilot.finetune_fraction", "pilot.crossfit_folds")

    @classmethod
    def of(cls, p: PilotSettings, e: EvalSettings, v: ValidationSettings, score_on: str) -> "SplitSettings":
        """The split the typed `pilot`, `eval` and `validation` groups and `score_on` describe."""
        return cls(method=p.method, n=p.n, seed=p.seed, by=p.by, eval_n=e.n, eval_seed=e.seed, validation_n=v.n,
                   finetune_fraction=p.finetune_fraction, crossfit_folds=p.crossfit_folds, score_on=score_on)

    @property
    def rectified(self) -> bool:
        """Whether the pilot is split into fine-tuning and rectification humans."""
        return self.finetune_fraction != 1 or self.crossfit_folds != 1

    @property
    def rectify_key(self) -> str:
        """The config key that asks for rectification (for messages)."""
        return self.RECTIFY_KEYS[0] if self.finetune_fraction != 1 else self.RECTIFY_KEYS[1]

    def draw(self, study: Study) -> "Split":
        split = draw_split(study, method=self.method, n=self.n, seed=self.seed, by=self.by, eval_n=self.eval_n,
                           eval_seed=self.eval_seed, validation_n=self.validation_n)
        split = split.with_folds(finetune_fraction=self.finetune_fraction, crossfit_folds=self.crossfit_folds,
                                 seed=self.seed)
        return split.scored_on(self.score_on)


def draw_split(study: Study, *, method: str = "random", n: int, seed: int = 0, by: str | None = None,
               eval_n: int | None = None, eval_seed: int | None = None, validation_n: int = 0) -> Split:
    """Draw `eval_n` evaluation humans (seeded by `eval_seed`, default `seed`), then `n` pilot
    respondents (`random`, or `stratified` by the spec subgroup `by`) and `validation_n`
    validation humans from the rest (seeded by `seed`). The same arguments give the same split.
    """
    total = len(study)
    if method not in METHODS:
        raise ConfigError("pilot.method", method, f"expected one of {', '.join(METHODS)}")
    if eval_n is not None and (not _is_int(eval_n) or eval_n < 1):
        raise ConfigError("eval.n", eval_n, "expected a positive integer, or null for all non-pilot respondents")
    if not _is_int(validation_n) or validation_n < 0:
        raise ConfigError("validation.n", validation_n, "expected 0 (no validation humans) or a positive integer")
    if eval_n is not None and eval_n + validation_n + 1 > total:
        raise ConfigError("eval.n", eval_n, f"study {study.spec.name!r} has {total} respondents: eval.n + "
                          f"validation.n ({validation_n}) + a pilot of at least 1 must fit")
    room = total - validation_n - (eval_n if eval_n is not None else 1)
    if not _is_int(n) or n < 1 or n > room:
        raise ConfigError("pilot.n", n, f"expected an integer from 1 to {room}: study {study.spec.name!r} has "
                          f"{total} respondents, of which " + (f"{eval_n} are evaluation humans (eval.n)"
                          if eval_n is not None else "at least one must remain for evaluation")
                          + (f" and {validation_n} validation humans (validation.n)" if validation_n else ""))
    everyone = np.arange(total)
    evaluation = None
    if eval_n is not None:
        eval_rng = np.random.default_rng(seed if eval_seed is None else eval_seed)
        evaluation = np.sort(eval_rng.choice(total, size=eval_n, replace=False))
    candidates = np.setdiff1d(everyone, evaluation) if evaluation is not None else everyone
    rng = np.random.default_rng(seed)
    if method == "random":
        chosen = rng.choice(candidates, size=n, replace=False)
    else:
        chosen = _stratified(study, rng, n, by, candidates, need_rest=evaluation is None)
    rest = np.setdiff1d(candidates, chosen)
    validation = np.sort(rng.choice(rest, size=validation_n, replace=False)) if validation_n else np.array([], int)
    if evaluation is None:
        evaluation = np.setdiff1d(rest, validation)
    ids = study.ids
    return Split(pilot=ids[np.sort(chosen)], evaluation=ids[evaluation], validation=ids[validation])


def _is_int(x: object) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


def _stratified(study: Study, rng: np.random.Generator, n: int, by: str | None, candidates: np.ndarray,
                need_rest: bool) -> np.ndarray:
    names = [sg.name for sg in study.spec.subgroups]
    if by not in names:
        raise ConfigError("pilot.by", by, f"a stratified pilot needs one of the spec's subgroups "
                          f"({', '.join(names) or 'the spec defines none'})")
    subgroup = next(sg for sg in study.spec.subgroups if sg.name == by)
    levels = subgroup_levels(subgroup, study.frame).fillna(UNASSIGNED).to_numpy()[candidates]
    strata = pd.unique(levels)
    sizes = np.array([(levels == s).sum() for s in strata])
    # Proportional allocation, rounded by largest remainder so the parts add up to n.
    exact = n * sizes / sizes.sum()
    alloc = np.floor(exact).astype(int)
    alloc[np.argsort(-(exact - alloc), kind="stable")[: n - alloc.sum()]] += 1
    for stratum, size, k in zip(strata, sizes, alloc):
        if k == 0 or k > size or (need_rest and k == size):
            why = "gets no pilot place" if k == 0 else "would have no respondent left for evaluation"
            raise ConfigError("pilot.n", n, f"stratum {stratum!r} of subgroup {by!r} has {size} of {sizes.sum()} "
                              f"respondents and {why}; choose another pilot.n, or pilot=random")
    parts = [rng.choice(np.flatnonzero(levels == s), size=k, replace=False) for s, k in zip(strata, alloc)]
    return candidates[np.concatenate(parts)]
