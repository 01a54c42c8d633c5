"""Individual level: does each twin answer as its own human did? (METRICS.md section 7)"""

from __future__ import annotations

import numpy as np

from fidelity_exp.metrics.divergence import nanmean_rows
from fidelity_exp.metrics.encoded import Encoded
from fidelity_exp.metrics.registry import HIGHER, FamilyResult, KeyInfo, clean, register


def twin_rows(h: Encoded, s: Encoded) -> np.ndarray | None:
    """(n_s,) row of each twin's human in h (-1 if absent); None when s has no `twin_of`."""
    if "twin_of" not in s.frame.columns:
        return None
    return h.frame.index.get_indexer(s.frame["twin_of"].to_numpy())


# A swap of a twin's answers with its human's leaves accuracy unchanged: no swap test (section 10).
_ACCURACY = dict(better=HIGHER, bounds=(0, 1), identical=1.0, swap_invariant=True)


@register(
    "individual",
    KeyInfo("individual/accuracy/mean", **_ACCURACY, aggregate=True, headline=True, curve=True),
    KeyInfo("individual/*/accuracy", **_ACCURACY),
)
def individual(h: Encoded, hi: np.ndarray, s: Encoded, si: np.ndarray, opts) -> FamilyResult:
    """Share of twins whose answer equals their human's, over twins where both answered.

    Twins are resampled (`si`); each twin's human is fixed by `twin_of`, so `hi` plays no part.
    """
    twins = opts.cached(("twins", id(h), id(s)), lambda: twin_rows(h, s))
    if twins is None:
        return FamilyResult({})
    out, accuracies = {}, []
    human_row = twins[si]                                             # (B, m)
    for j, q in enumerate(h.spec.questions):
        mine = s.codes[si, j]
        theirs = np.where(human_row >= 0, h.codes[np.maximum(human_row, 0), j], -1)
        both = (mine >= 0) & (theirs >= 0)
        n = both.sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            acc = np.where(n > 0, ((mine == theirs) & both).sum(axis=1) / n, np.nan)
        out[f"individual/{clean(q.column)}/accuracy"] = acc
        accuracies.append(acc)
    out["individual/accuracy/mean"] = nanmean_rows(accuracies, si.shape[0])
    return FamilyResult(out)
