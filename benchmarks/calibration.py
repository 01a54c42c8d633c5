"""Calibration of the tests against the humans and of the default intervals, on a population with
known truth: the synthetic disclosure study (src/fidelity_exp/study/synthetic.py) at 60,000 draws.

Each repetition draws `n` humans from the population and gives each a twin with the same persona:
- `same`: the twin's answers drawn afresh from the population's own process (exchangeable with
  its human's: the null hypothesis of the swap tests);
- `perturbed`: the same twins, then 20% of their answers to each question collapsed to the
  population's most common answer (a simulator that is too uniform).
Figures (METRICS.md sections 8 and 10):
- `same`: per key family, the share of tests with p <= 0.05 (a valid test: about 0.05 or less),
  and the share of repetitions where `tests/distinguishable/share` is 0;
- `perturbed`: the share of repetitions where `divergence/js/mean` is detected (q <= 0.05);
- coverage: per family, the share of default (bias-corrected) 95% intervals that hold the
  population value, computed on the whole population (60,000 humans against their 60,000
  perturbed twins), for the keys whose population value is defined (not the regression
  aggregates, whose value depends on the sample size through significance, nor
  fidelity_score, which contains them).

    python benchmarks/calibration.py [--reps 200] [--n 200] [--bootstrap 200] [--permutations 200] [--out f.json]

Prints the figures and, as its last line, one JSON object.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import pandas as pd

from fidelity_exp.metrics import Options, evaluate_arm, registry
from fidelity_exp.metrics.intervals import METHODS, interval
from fidelity_exp.study import canonical_frame, load_spec_file
from fidelity_exp.study.synthetic import disclosure, disclosure_twins
from fidelity_exp.study.synthetic_file import check_synthetic

SPEC = Path(__file__).resolve().parents[1] / "conf" / "data" / "disclosure.yaml"
POPULATION = 60_000
COLLAPSE = 0.2
UNDEFINED_POPULATION_VALUE = ("regression/", "fidelity_score")


def family(key: str) -> str:
    return key.split("/", 1)[0]


def make_twins(spec, raw_humans: pd.DataFrame, seed: int, collapse: float, modes: dict) -> pd.DataFrame:
    twins = disclosure_twins(raw_humans, seed=seed)
    rng = np.random.default_rng([seed, 7])
    for q in spec.questions:
        hit = rng.random(len(twins)) < collapse
        twins.loc[hit, q.column] = modes[q.column]
    twins = twins.drop(columns=[spec.id]).assign(twin_of=raw_humans[spec.id].to_numpy())
    return check_synthetic(spec, twins, name="twins", human_ids=pd.Index(raw_humans[spec.id]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=200)
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--bootstrap", type=int, default=200)
    parser.add_argument("--permutations", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    started = time.perf_counter()

    spec = load_spec_file(SPEC)
    raw = disclosure(POPULATION, seed=args.seed + 1)
    people = canonical_frame(spec, raw, origin="population", data_name="population")
    modes = {q.column: raw[q.column].mode().iloc[0] for q in spec.questions}
    # population values: every human against a perturbed twin of its own
    truth = evaluate_arm(spec, people, make_twins(spec, raw, 10_000 + args.seed, COLLAPSE, modes),
                         Options(bootstrap=0, permutations=0, reference_splits=0)).values

    rejections, distinguishable_zero = defaultdict(lambda: [0, 0]), 0
    detected, covered, covered_key = 0, defaultdict(lambda: [0, 0]), defaultdict(lambda: [0, 0])
    by_method = defaultdict(lambda: [0, 0])   # (method, key pattern): every method on the same replicates
    rng = np.random.default_rng(args.seed)
    for rep in range(args.reps):
        rows = np.sort(rng.choice(POPULATION, size=args.n, replace=False))
        humans, raw_humans = people.iloc[rows], raw.iloc[rows]
        opts = Options(bootstrap=args.bootstrap, permutations=args.permutations, reference_splits=0, seed=rep)
        same = evaluate_arm(spec, humans, make_twins(spec, raw_humans, rep, 0.0, modes), opts).values
        for key, p in same.items():
            if key.endswith("/perm/p_value"):
                counts = rejections[family(key)]
                counts[0] += p <= 0.05
                counts[1] += 1
        distinguishable_zero += same.get(registry.tests_key("distinguishable/share")) == 0
        result = evaluate_arm(spec, humans, make_twins(spec, raw_humans, rep, COLLAPSE, modes), opts)
        perturbed = result.values
        detected += (perturbed.get(registry.perm_key("divergence/js/mean", "q_value")) or 1) <= 0.05
        for key, value in truth.items():
            low, high = (perturbed.get(k) for k in registry.interval_keys(key))
            if value is None or low is None or key.startswith(UNDEFINED_POPULATION_VALUE):
                continue
            info = registry.unprefixed_info(key)
            for counts in (covered[family(key)], covered_key[info.pattern]):
                counts[0] += low <= value <= high
                counts[1] += 1
            for method in METHODS:
                lo, hi = interval(perturbed[key], result.replicates[key], method, bias=info.bias, bounds=info.bounds)
                counts = by_method[f"{method}:{info.pattern}"]
                counts[0] += lo is not None and lo <= value <= hi
                counts[1] += 1
        if (rep + 1) % 20 == 0:
            print(f"  {rep + 1}/{args.reps} repetitions, {time.perf_counter() - started:.0f} s", flush=True)

    figures = {
        "population": POPULATION, "n": args.n, "reps": args.reps, "bootstrap": args.bootstrap,
        "permutations": args.permutations,
        "same_rejection_rate_by_family": {f: round(k / t, 4) for f, (k, t) in sorted(rejections.items())},
        "same_tests_by_family": {f: t for f, (_, t) in sorted(rejections.items())},
        "same_distinguishable_share_zero": round(distinguishable_zero / args.reps, 4),
        "perturbed_divergence_detected": round(detected / args.reps, 4),
        "perturbed_coverage_by_family": {f: round(k / t, 4) for f, (k, t) in sorted(covered.items())},
        "perturbed_intervals_by_family": {f: t for f, (_, t) in sorted(covered.items())},
        "perturbed_coverage_by_key": {k: round(c / t, 4) for k, (c, t) in sorted(covered_key.items())},
        "perturbed_coverage_by_method_and_key": {k: round(c / t, 4) for k, (c, t) in sorted(by_method.items())},
        "seconds": round(time.perf_counter() - started, 1),
    }
    print(f"same population ({args.reps} x {args.n}): tests with p <= 0.05 by family "
          f"{figures['same_rejection_rate_by_family']}; distinguishable share 0 in "
          f"{figures['same_distinguishable_share_zero']:.0%} of repetitions")
    print(f"perturbed ({COLLAPSE:.0%} of answers collapsed to the mode): divergence detected in "
          f"{figures['perturbed_divergence_detected']:.0%}; interval coverage by family "
          f"{figures['perturbed_coverage_by_family']}")
    line = json.dumps(figures)
    if args.out:
        Path(args.out).write_text(line + "\n")
    print(line)


if __name__ == "__main__":
    main()
