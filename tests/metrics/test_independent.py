"""`+experiment=evaluate` on a spec written by someone else (string and integer option codes,
dotted column names, a categorical persona term in a formula) agrees to 1e-6 with an
independent computation of METRICS.md written here from pandas, scipy and statsmodels."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import statsmodels.formula.api as smf
import yaml
from scipy.spatial.distance import jensenshannon
from scipy.stats import entropy, spearmanr

from ..command import cli

QUESTIONS = {  # column -> (type, role, codes)
    "q.trust": ("ordinal", "belief", [1, 2, 3, 4, 5]),
    "vote.choice": ("nominal", "belief", ["lab", "con", "lib"]),
    "will.buy": ("binary", "action", ["n", "y"]),
}
FORMULA = 'Q("will.buy") ~ Q("q.trust") + Q("demo.age") + C(region)'


def spec_dict(csv: str) -> dict:
    return {
        "name": "foreign", "version": 3, "source": {"kind": "csv", "path": csv}, "id": "resp.id",
        "persona": [{"column": "demo.age", "label": "Age", "type": "numeric"},
                    {"column": "region", "label": "Region", "type": "nominal"}],
        "questions": [{"column": c, "text": f"{c}?", "type": t, "role": r, "options": {k: f"opt {k}" for k in codes}}
                      for c, (t, r, codes) in QUESTIONS.items()],
        "subgroups": {"region": {"column": "region", "groups": {"North": ["north"], "South": ["south"],
                                                                "West": ["west"]}}},
        "coherence": [{"belief": "q.trust", "action": "will.buy", "contradiction": {"belief": [1, 2], "action": ["y"]}}],
        "regressions": {"buy": {"formula": FORMULA, "family": "logit"}},
    }


def make_people(n: int, seed: int, ids=None) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    region = rng.choice(["north", "south", "west"], size=n, p=[0.5, 0.3, 0.2])
    age = rng.integers(18, 80, size=n)
    z = rng.normal(size=n) + 0.4 * (region == "north")
    trust = np.clip(np.round(3 + z), 1, 5).astype(int)
    vote = np.where(z > 0.5, "con", np.where(z < -0.5, "lab", "lib"))
    eta = -1 + 0.6 * (trust - 3) + 0.01 * (age - 50) + 0.5 * (region == "west")
    buy = np.where(rng.random(n) < 1 / (1 + np.exp(-eta)), "y", "n")
    frame = pd.DataFrame({"resp.id": ids if ids is not None else [f"p{i}" for i in range(n)], "demo.age": age,
                          "region": region, "q.trust": trust, "vote.choice": vote, "will.buy": buy})
    frame.loc[rng.random(n) < 0.03, "vote.choice"] = None
    return frame


def numeric(frame: pd.DataFrame) -> pd.DataFrame:
    out = frame.copy()
    for c, (_, _, codes) in QUESTIONS.items():
        if not all(isinstance(k, int) for k in codes):
            out[c] = out[c].map({k: float(i) for i, k in enumerate(codes)})
    return out


def freqs(series: pd.Series, codes) -> np.ndarray:
    counts = series.dropna().value_counts()
    p = np.array([counts.get(k, 0) for k in codes], dtype=float)
    return p / p.sum()


def independent(h: pd.DataFrame, s: pd.DataFrame) -> dict[str, float]:
    """METRICS.md, written again from scratch on plain frames."""
    out = {}
    for c, (kind, _, codes) in QUESTIONS.items():
        ph, ps = freqs(h[c], codes), freqs(s[c], codes)
        out[f"divergence/js/{c}"] = jensenshannon(ph, ps, base=2)
        out[f"divergence/tvd/{c}"] = 0.5 * np.abs(ph - ps).sum()
        if kind != "nominal":
            out[f"divergence/w1/{c}"] = np.abs(np.cumsum(ph)[:-1] - np.cumsum(ps)[:-1]).sum() / (len(codes) - 1)
        out[f"heterogeneity/entropy/{c}/human"] = entropy(ph) / math.log(len(codes))
        out[f"heterogeneity/entropy/{c}/synthetic"] = entropy(ps) / math.log(len(codes))
    out["divergence/js/mean"] = np.mean([out[f"divergence/js/{c}"] for c in QUESTIONS])
    hn, sn = numeric(h), numeric(s)
    for c in ("q.trust", "will.buy"):
        out[f"heterogeneity/sd_ratio/{c}"] = sn[c].std(ddof=1) / hn[c].std(ddof=1)
    beliefs = ["q.trust", "vote.choice"]
    out["heterogeneity/unique_profiles/human"] = len(h[beliefs].dropna().drop_duplicates())
    out["heterogeneity/unique_profiles/synthetic"] = len(s[beliefs].dropna().drop_duplicates())
    for level, code in (("North", "north"), ("South", "south"), ("West", "west")):
        hl, sl = h[h.region == code], s[s.region == code]
        out[f"subgroup/region/{level}/js"] = np.mean(
            [jensenshannon(freqs(hl[c], k), freqs(sl[c], k), base=2) for c, (_, _, k) in QUESTIONS.items()])
    out["subgroup/region/js/mean"] = np.mean([out[f"subgroup/region/{lv}/js"] for lv in ("North", "South", "West")])
    both_h = hn[["q.trust", "will.buy"]].dropna()
    both_s = sn[["q.trust", "will.buy"]].dropna()
    out["coherence/q.trust__will.buy/spearman/human"] = spearmanr(both_h["q.trust"], both_h["will.buy"]).statistic
    out["coherence/q.trust__will.buy/spearman/synthetic"] = spearmanr(both_s["q.trust"], both_s["will.buy"]).statistic
    fh, fs = smf.logit(FORMULA, hn).fit(disp=0), smf.logit(FORMULA, sn).fit(disp=0)
    names = {'Q("q.trust")': "Q__q.trust__", 'Q("demo.age")': "Q__demo.age__", "C(region)[T.south]": "C_region__T.south_",
             "C(region)[T.west]": "C_region__T.west_", "Intercept": "Intercept"}
    for term, key in names.items():
        out[f"regression/buy/{key}/coef/human"] = fh.params[term]
        out[f"regression/buy/{key}/coef/synthetic"] = fs.params[term]
        out[f"regression/buy/{key}/se/synthetic"] = fs.bse[term]
    terms = [t for t in names if t != "Intercept"]
    out["regression/buy/sign_agreement"] = np.mean([np.sign(fh.params[t]) == np.sign(fs.params[t]) for t in terms])
    merged = s.merge(h, left_on="twin_of", right_on="resp.id", suffixes=("", "_h"))
    for c in QUESTIONS:
        ok = merged[c].notna() & merged[f"{c}_h"].notna()
        out[f"individual/{c}/accuracy"] = (merged.loc[ok, c] == merged.loc[ok, f"{c}_h"]).mean()
    return out


@pytest.mark.slow
def test_evaluate_matches_an_independent_computation(tmp_path):
    humans = make_people(400, seed=1)
    synthetic = make_people(350, seed=2, ids=None).drop(columns="resp.id")
    synthetic.insert(0, "twin_of", humans["resp.id"].sample(350, random_state=0).to_numpy())
    persona = ["demo.age", "region"]      # paired twins were given their humans' persona (checked since #31)
    synthetic[persona] = humans.set_index("resp.id").loc[synthetic["twin_of"], persona].to_numpy()
    synthetic["notes"] = "produced elsewhere"    # an extra column a user's file may carry
    humans.to_csv(tmp_path / "humans.csv", index=False)
    synthetic.to_csv(tmp_path / "twins.csv", index=False)
    conf = tmp_path / "their_conf" / "data"
    conf.mkdir(parents=True)
    (conf / "foreign.yaml").write_text(yaml.safe_dump(spec_dict("humans.csv"), sort_keys=False))

    done = cli(f"hydra.searchpath=[file://{tmp_path / 'their_conf'}]", "+experiment=evaluate", "data=foreign",
               "evaluate.synthetic=twins.csv", "evaluate.arm=their_model", f"hydra.run.dir={tmp_path / 'run'}",
               "metrics.bootstrap=20", "metrics.reference_splits=3", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())

    expected = independent(pd.read_csv(tmp_path / "humans.csv"), pd.read_csv(tmp_path / "twins.csv"))
    for key, value in expected.items():
        assert metrics[f"their_model/{key}"] == pytest.approx(value, abs=1e-6), key
    assert metrics["their_model/fidelity_score"] is not None
    assert "reference/human_split/divergence/js/mean" in metrics
