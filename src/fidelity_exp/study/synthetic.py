"""Synthetic studies with known ground truth (`source: {kind: synthetic, name: ...}`).

`disclosure` mirrors the design of the information-disclosure experiment this tool grew from:
929 respondents randomly assigned to 8 groups of a 2x2x2 design of disclosure-request
framings, demographics including an ethnicity-like subgroup of unequal sizes, three Likert
privacy beliefs, and a binary disclosure action.

The data-generating process (every draw from `numpy.random.default_rng(seed)`):

    concern (1-5)  = cut(z_c),  z_c = 0.35*minority + 0.012*(age-45) + 0.15*(educ-3) + e1
    trust   (1-5)  = cut(z_t),  z_t = -0.45*z_c + 0.10*(income-3) + e2
    benefit (1-5)  = cut(z_b),  z_b = -0.02*(age-45) + e3
    cut(z) = 1 + #{thresholds (-1.3, -0.4, 0.4, 1.2) below z};   e1, e2, e3 ~ N(0, 1)
    P(disclose = 1) = logistic(eta), with eta linear in the stored values:

        eta = TRUE_COEFFICIENTS["Intercept"] + sum_t TRUE_COEFFICIENTS[t] * x_t

where the terms x_t are named as statsmodels names them in DISCLOSURE_FORMULA, so a logit of
that formula on a large draw recovers TRUE_COEFFICIENTS. The intercept is set so that about a
quarter of privacy-concerned respondents (concern 4 or 5) disclose anyway: the privacy paradox.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

DISCLOSURE_FORMULA = (
    "disclose ~ purpose + assurance + sensitive + concern + trust + benefit + age + C(gender)"
)
TRUE_COEFFICIENTS: dict[str, float] = {
    "Intercept": -0.30,
    "purpose": 0.60,        # the request states why the data is needed
    "assurance": 0.50,      # the request promises the data will not be shared
    "sensitive": -0.90,     # the request asks for health information rather than an email address
    "concern": -0.55,       # per Likert point of privacy concern
    "trust": 0.45,          # per Likert point of trust in companies
    "benefit": 0.35,        # per Likert point of valuing personalised services
    "age": -0.015,          # per year
    "C(gender)[T.male]": -0.25,
}
ETHNICITY_SHARES = {"white": 0.60, "hispanic": 0.17, "black": 0.13, "asian": 0.06, "other": 0.04}
_THRESHOLDS = np.array([-1.3, -0.4, 0.4, 1.2])


def _likert(z: np.ndarray) -> np.ndarray:
    return 1 + (z[:, None] > _THRESHOLDS[None, :]).sum(axis=1)


def disclosure(n: int = 929, seed: int = 0, coefficients: dict[str, float] | None = None) -> pd.DataFrame:
    """Draw `n` respondents of the synthetic disclosure study; the same seed gives the same frame.

    `coefficients` replaces some of TRUE_COEFFICIENTS (e.g. a flipped sign, for testing that
    regression recovery notices it); the beliefs and demographics are drawn the same way.
    """
    b = _coefficients(coefficients)
    rng = np.random.default_rng(seed)
    # Balanced random assignment to the 8 cells of the 2x2x2 design.
    cell = rng.permutation(np.arange(n) % 8)
    given = pd.DataFrame({"respondent_id": [f"D{i:05d}" for i in range(n)]})
    given["age"] = np.clip(np.round(rng.normal(45, 15, n)), 18, 85).astype(int)
    given["gender"] = rng.choice(["female", "male"], size=n)
    given["educ"] = rng.choice(np.arange(1, 6), size=n, p=[0.08, 0.30, 0.28, 0.24, 0.10])
    given["income"] = rng.choice(np.arange(1, 6), size=n, p=[0.18, 0.24, 0.25, 0.20, 0.13])
    given["ethnicity"] = rng.choice(list(ETHNICITY_SHARES), size=n, p=list(ETHNICITY_SHARES.values()))
    given["purpose"], given["assurance"], given["sensitive"] = (cell >> 2) & 1, (cell >> 1) & 1, cell & 1
    return _answer(given, rng, b)


def disclosure_twins(given: pd.DataFrame, seed: int = 0, coefficients: dict[str, float] | None = None
                     ) -> pd.DataFrame:
    """Perfect twins: the persona and conditions of `given` (disclosure respondents), their answers
    drawn afresh from the same process. A twin's answers are then exchangeable with its human's,
    which is the null hypothesis of the swap tests (METRICS.md section 10): what calibrating
    the tests and intervals needs."""
    columns = ["respondent_id", "age", "gender", "educ", "income", "ethnicity", "purpose", "assurance", "sensitive"]
    return _answer(given[columns].reset_index(drop=True), np.random.default_rng(seed), _coefficients(coefficients))


def _coefficients(coefficients: dict[str, float] | None) -> dict[str, float]:
    b = {**TRUE_COEFFICIENTS, **(coefficients or {})}
    unknown = set(b) - set(TRUE_COEFFICIENTS)
    if unknown:
        raise ValueError(f"unknown terms {sorted(unknown)}; the model's terms are {list(TRUE_COEFFICIENTS)}")
    return b


def _answer(given: pd.DataFrame, rng: np.random.Generator, b: dict[str, float]) -> pd.DataFrame:
    """The beliefs and the action of respondents with these personas and conditions."""
    n, age = len(given), given["age"].to_numpy()
    minority = given["ethnicity"].isin(["black", "hispanic"]).to_numpy().astype(float)
    z_c = 0.35 * minority + 0.012 * (age - 45) + 0.15 * (given["educ"].to_numpy() - 3) + rng.normal(size=n)
    z_t = -0.45 * z_c + 0.10 * (given["income"].to_numpy() - 3) + rng.normal(size=n)
    z_b = -0.02 * (age - 45) + rng.normal(size=n)
    concern, trust, benefit = _likert(z_c), _likert(z_t), _likert(z_b)
    eta = (
        b["Intercept"] + b["purpose"] * given["purpose"].to_numpy() + b["assurance"] * given["assurance"].to_numpy()
        + b["sensitive"] * given["sensitive"].to_numpy() + b["concern"] * concern + b["trust"] * trust
        + b["benefit"] * benefit + b["age"] * age + b["C(gender)[T.male]"] * (given["gender"].to_numpy() == "male")
    )
    disclose = (rng.random(n) < 1.0 / (1.0 + np.exp(-eta))).astype(int)
    return given.assign(concern=concern, trust=trust, benefit=benefit, disclose=disclose)


GENERATORS = {"disclosure": disclosure}
