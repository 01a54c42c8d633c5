"""Swap tests: is an arm distinguishable from the humans (METRICS.md section 10), is one arm
better than another (section 11)?

Both run on the batched code path of the bootstrap: a swapped data set is a selection of rows of
a stacked data set, so R swaps are one batch `compute(h2, hi, s2, si)` of R rows.

- Paired (every twin has its own human, by `twin_of`): stack the humans on top of the humans'
  own rows carrying their twins' answers, and the twins on top of the twins carrying their
  humans' answers (persona and condition columns stay). Swapping pair i is choosing row i + n
  instead of row i on both sides. Under "a twin's answers are exchangeable with its human's",
  every swap pattern is equally likely, so the observed value is one draw of the swapped ones.
- Pooled (no `twin_of`, or several twins of one human): humans and twins are pooled and the
  labels permuted (a two-sample permutation test of the same statistics).
- Arm vs arm: stack arm A's twins on top of arm B's twins of the same humans; a swap gives
  pair i's A twin to B and B's to A, the humans stay as they are.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from fidelity_exp.metrics.encoded import Encoded, encode

PAIRED, POOLED = "paired_swap", "label_permutation"


@dataclass(frozen=True)
class Pairing:
    """How an arm's twins relate to the humans."""

    design: str                  # PAIRED or POOLED
    twin_of_human: np.ndarray    # (n,) row of each human's twin in the synthetic set, -1 without one
    complete: bool               # one twin per human, one human per twin: pairs can be resampled

    @property
    def paired(self) -> bool:
        return self.design == PAIRED


def pairing(h: Encoded, s: Encoded) -> Pairing:
    none = np.full(h.n, -1, dtype=np.int64)
    if "twin_of" not in s.frame.columns:
        return Pairing(POOLED, none, False)
    rows = h.frame.index.get_indexer(s.frame["twin_of"].to_numpy())
    if (rows < 0).any() or len(np.unique(rows)) != len(rows):
        return Pairing(POOLED, none, False)
    twin_of_human = none.copy()
    twin_of_human[rows] = np.arange(s.n)
    return Pairing(PAIRED, twin_of_human, bool(s.n == h.n and (twin_of_human >= 0).all()))


def _with_answers(frame: pd.DataFrame, donor: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """`frame` with the question columns of `donor` (row for row, same categories)."""
    out = frame.copy()
    for c in columns:
        out[c] = pd.Categorical(donor[c].to_numpy(), dtype=frame[c].dtype)
    return out


def swapped_sets(h: Encoded, s: Encoded, pair: Pairing, swaps: np.ndarray
                 ) -> tuple[Encoded, np.ndarray, Encoded, np.ndarray]:
    """(h2, hi, s2, si): R swapped human and synthetic sets as row selections; `swaps` (R, m)
    booleans, one per twin (used for paired twins only)."""
    spec = h.spec
    columns = spec.question_columns
    if pair.paired:
        human_of_twin = np.full(s.n, -1, dtype=np.int64)
        humans = np.flatnonzero(pair.twin_of_human >= 0)
        human_of_twin[pair.twin_of_human[humans]] = humans
        # humans whose twin answered for them, twins who answered as their humans did
        donor_for_human = s.frame.iloc[np.maximum(pair.twin_of_human, 0)]
        h_swapped = _with_answers(h.frame, donor_for_human, columns)
        s_swapped = _with_answers(s.frame, h.frame.iloc[np.maximum(human_of_twin, 0)], columns)
        h2 = encode(spec, pd.concat([h.frame, h_swapped]))
        s2 = encode(spec, pd.concat([s.frame, s_swapped]))
        swap_h = np.zeros((len(swaps), h.n), dtype=np.int64)
        swap_h[:, humans] = swaps[:, pair.twin_of_human[humans]]
        hi = np.arange(h.n)[None, :] + h.n * swap_h
        si = np.arange(s.n)[None, :] + s.n * swaps.astype(np.int64)
        return h2, hi, s2, si
    raise ValueError("swapped_sets needs a paired design")


def permuted_sets(h: Encoded, s: Encoded, rng: np.random.Generator, r: int
                  ) -> tuple[Encoded, np.ndarray, Encoded, np.ndarray]:
    """(pooled, hi, pooled, si): R label permutations of the pooled humans and twins."""
    spec = h.spec
    pooled = encode(spec, pd.concat([h.frame[spec.columns], s.frame[spec.columns]], ignore_index=True))
    perms = np.argsort(rng.random((r, h.n + s.n)), axis=1)
    return pooled, perms[:, :h.n], pooled, perms[:, h.n:]


def arm_swapped_sets(a: Encoded, b: Encoded, pair_a: Pairing, pair_b: Pairing, swaps: np.ndarray
                     ) -> tuple[Encoded, np.ndarray, np.ndarray]:
    """(stack, ai, bi): arms A and B (both completely paired with the same humans) stacked, and
    R swapped selections of it: row i of A' is human i's twin from A or, swapped, from B."""
    a_rows, b_rows = pair_a.twin_of_human, pair_b.twin_of_human        # (n,) twin of human i in each arm
    frame = pd.concat([a.frame.iloc[a_rows], b.frame.iloc[b_rows]], ignore_index=True)
    stack = encode(a.spec, frame)
    n = len(a_rows)
    base = np.arange(n)[None, :]
    swap = swaps.astype(np.int64)
    return stack, base + n * swap, base + n * (1 - swap)


def p_value(observed_badness: float, swapped_badness: np.ndarray) -> float:
    """(1 + #{swapped at least as bad as observed}) / (R + 1), over the defined swaps."""
    return float((1 + np.sum(swapped_badness >= observed_badness - 1e-12)) / (len(swapped_badness) + 1))


def benjamini_hochberg(p: dict[str, float]) -> dict[str, float]:
    """Benjamini-Hochberg adjusted p values (q values), monotone and capped at 1."""
    if not p:
        return {}
    keys = sorted(p, key=lambda k: p[k])
    m = len(keys)
    q, running = {}, 1.0
    for rank in range(m, 0, -1):
        key = keys[rank - 1]
        running = min(running, p[key] * m / rank)
        q[key] = running
    return q
