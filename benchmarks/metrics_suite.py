"""Time the full metric suite at 5,000 humans x 5,000 synthetic respondents per arm, 10
questions, all families: two arms, each with B=200 bootstrap replicates (bias-corrected
intervals) and R=200 paired swaps (tests against the humans), the pair compared (its own 200
swaps; the intervals reuse the arms' shared resamples), and 20 human split-half references.

    python benchmarks/metrics_suite.py [--n 5000] [--bootstrap 200] [--permutations 200] [--out result.json]

Prints a human summary and, as its last line, one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import pandas as pd

from fidelity_exp.api import evaluate
from fidelity_exp.metrics import Options, evaluate_arm, human_reference
from fidelity_exp.metrics.encoded import encode
from fidelity_exp.metrics.suite import Context, compare_arms, compute
from fidelity_exp.study import canonical_frame, parse_spec


def make_spec(n_questions: int = 10):
    questions = []
    for i in range(n_questions - 1):
        questions.append({"column": f"q{i}", "text": f"Question {i}?", "type": "ordinal" if i % 3 else "nominal",
                          "role": "belief", "options": {k: f"option {k}" for k in range(1, 6)}})
    questions.append({"column": "act", "text": "Act?", "type": "binary", "role": "action",
                      "options": {0: "no", 1: "yes"}})
    return parse_spec({
        "name": "bench", "version": 1, "source": {"kind": "csv", "path": "unused.csv"},
        "persona": [{"column": "age", "type": "numeric"}, {"column": "group", "type": "nominal"}],
        "questions": questions,
        "subgroups": {"group": {"column": "group", "groups": {"a": ["a"], "b": ["b"], "c": ["c"], "d": ["d"]}},
                      "age": {"column": "age", "bins": [18, 35, 50, 65, 100]}},
        "coherence": [{"belief": "q1", "action": "act", "contradiction": {"belief": [4, 5], "action": [1]}},
                      {"belief": "q2", "action": "act"}],
        "regressions": {"act_model": {"formula": "act ~ q1 + q2 + q4 + age + C(group)", "family": "logit"}},
    })


def make_frame(spec, n: int, seed: int, shift: float) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    group = rng.choice(list("abcd"), size=n, p=[0.5, 0.25, 0.15, 0.1])
    age = rng.integers(18, 90, size=n)
    latent = rng.normal(size=n) + 0.3 * (group == "a") + shift
    data = {"age": age, "group": group}
    for q in spec.questions[:-1]:
        z = latent + rng.normal(size=n)
        data[q.column] = np.clip(np.round(3 + z), 1, 5).astype(int)
    eta = -0.5 + 0.4 * (data["q1"] - 3) - 0.3 * (data["q2"] - 3) + 0.01 * (age - 50)
    data["act"] = (rng.random(n) < 1 / (1 + np.exp(-eta))).astype(int)
    frame = pd.DataFrame(data)
    frame.loc[rng.random(n) < 0.02, "q3"] = np.nan   # some missing answers
    return canonical_frame(spec, frame, origin="bench", data_name="bench", use_id=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=5000)
    parser.add_argument("--bootstrap", type=int, default=200)
    parser.add_argument("--reference-splits", type=int, default=20)
    parser.add_argument("--permutations", type=int, default=200)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    spec = make_spec()
    human = make_frame(spec, args.n, 0, 0.0)
    arms = {"a": make_frame(spec, args.n, 1, 0.2), "b": make_frame(spec, args.n, 2, 0.1)}
    for frame in arms.values():
        frame["twin_of"] = human.index.to_numpy()   # one twin per human: paired tests, twin accuracy timed too
    opts = Options(bootstrap=args.bootstrap, reference_splits=args.reference_splits, permutations=args.permutations,
                   compare=(("a", "b"),))

    t0 = time.perf_counter()
    scores = evaluate(spec, human, arms, opts)     # what a run does: both arms, the pair, the reference
    total = time.perf_counter() - t0
    # the parts, separately
    t = time.perf_counter()
    results = {"a": evaluate_arm(spec, human, arms["a"], Options(bootstrap=args.bootstrap, permutations=0))}
    bootstrap_s = time.perf_counter() - t
    t = time.perf_counter()
    evaluate_arm(spec, human, arms["a"], Options(bootstrap=0, permutations=args.permutations))
    swaps_s = time.perf_counter() - t
    results["b"] = evaluate_arm(spec, human, arms["b"], Options(bootstrap=args.bootstrap, permutations=0))
    t = time.perf_counter()
    compare_arms(results, ("a", "b"), Options(permutations=args.permutations))
    compare_s = time.perf_counter() - t
    t = time.perf_counter()
    reference = human_reference(spec, human, opts)
    reference_s = time.perf_counter() - t

    # where the time goes: one batch of B replicates, family by family
    h, s = encode(spec, human), encode(spec, arms["a"])
    rng = np.random.default_rng(0)
    hi, si = rng.integers(0, h.n, (args.bootstrap, h.n)), rng.integers(0, s.n, (args.bootstrap, s.n))
    per_family = {}
    for name in opts.families:
        one = Options(families=(name,), bootstrap=args.bootstrap)
        t = time.perf_counter()
        compute(h, hi, s, si, Context(one))
        per_family[name] = round(time.perf_counter() - t, 2)

    figures = {
        "n_human": args.n, "n_synthetic_per_arm": args.n, "arms": 2, "questions": len(spec.questions),
        "bootstrap": args.bootstrap, "permutations": args.permutations, "reference_splits": args.reference_splits,
        "keys": len(scores.metrics), "suite_total_s": round(total, 2),
        "one_arm_bootstrap_s": round(bootstrap_s, 2), "one_arm_swap_tests_s": round(swaps_s, 2),
        "one_comparison_s": round(compare_s, 2), "human_reference_s": round(reference_s, 2),
        "bootstrap_batch_s_by_family": per_family, "fidelity_score_a": scores.metrics["a/fidelity_score"],
        "reference_keys": len(reference),
    }
    print(f"metric suite, {args.n} humans x 2 arms of {args.n}, {len(spec.questions)} questions, B={args.bootstrap}, "
          f"R={args.permutations} swaps, {args.reference_splits} reference halves: {figures['suite_total_s']} s "
          f"({figures['keys']} keys); per arm: bootstrap {figures['one_arm_bootstrap_s']} s, swap tests "
          f"{figures['one_arm_swap_tests_s']} s; the comparison {figures['one_comparison_s']} s; reference "
          f"{figures['human_reference_s']} s")
    print("one bootstrap batch by family (s):", per_family)
    line = json.dumps(figures)
    if args.out:
        with open(args.out, "w") as f:
            f.write(line + "\n")
    print(line)


if __name__ == "__main__":
    main()
