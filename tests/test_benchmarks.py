"""The benchmark scripts run and end with their JSON figures (no timing is asserted: the
machine is shared and noisy; the figures are read by people, side by side in one run)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from .conftest import REPO


def run(script: str, *args: str, tmp_path) -> dict:
    out = tmp_path / "figures.json"
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / script), *args, "--out", str(out)],
                          capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    last = json.loads(done.stdout.strip().splitlines()[-1])
    assert last == json.loads(out.read_text())
    return last


@pytest.mark.slow
def test_simulate_benchmark(tmp_path):
    # a model config given by path (as for benchmarks/smollm2_135m_random.yaml), not by preset name
    model = str(REPO / "conf" / "model" / "tiny_random.yaml")
    figures = run("simulate.py", "--model", model, "--twins", "6", "--skip-ablations", tmp_path=tmp_path)
    for key in ("ratio_vs_naive", "frac_of_matmul_peak", "tokens_per_s", "peak_rss_mb",
                "engine_respondent_questions_per_s", "naive_respondent_questions_per_s"):
        assert figures[key] > 0, key
    assert figures["naive_respondent_questions"] == 6 * 5 and figures["naive_new_tokens_per_question"] > 0
    assert figures["ratio_bound_at_matmul_peak"] > 0 and figures["naive_tokens_per_engine_token"] > 1
    assert 0 < figures["distinct_prefix_tokens_per_respondent"] <= figures["useful_tokens_per_respondent"]
    for mode in ("fixed_with_position_metrics", "averaged", "random_with_position_metrics"):
        assert figures[f"option_order_{mode}_time_ratio"] > 0
        assert figures[f"option_order_{mode}_token_ratio"] > 1      # the extra scorings read more tokens


def test_distinct_prefix_tokens_counts_the_prefix_tree():
    sys.path.insert(0, str(REPO / "benchmarks"))
    from simulate import distinct_prefix_tokens

    # the tree of these: 1, 12, 123, 124, 15 (a repeated interview adds nothing)
    assert distinct_prefix_tokens([[1, 2, 3], [1, 2, 4], [1, 5], [1, 2, 3]]) == 5
    assert distinct_prefix_tokens([[7, 8], [9]]) == 3
    assert distinct_prefix_tokens([]) == 0


@pytest.mark.slow
def test_finetune_benchmark(tmp_path):
    figures = run("finetune.py", "--model", "tiny_random", "--steps", "2", "--pilot", "16", tmp_path=tmp_path)
    assert figures["steps"] == 2 and figures["tokens_per_s"] > 0 and figures["frac_of_matmul_peak"] > 0


def test_metrics_suite_benchmark(tmp_path):
    figures = run("metrics_suite.py", "--n", "300", "--bootstrap", "5", "--reference-splits", "2",
                  "--permutations", "19", tmp_path=tmp_path)
    assert figures["suite_total_s"] > 0 and figures["keys"] > 300
    for part in ("one_arm_bootstrap_s", "one_arm_swap_tests_s", "one_comparison_s", "human_reference_s"):
        assert figures[part] > 0, part


@pytest.mark.slow
def test_served_benchmark(tmp_path):
    figures = run("served.py", "--twins", "2", "--concurrency", "1,2", tmp_path=tmp_path)
    assert figures["in_process_twins_per_s"] > 0
    for c in (1, 2):
        assert figures[f"served_c{c}_twins_per_s"] > 0 and figures[f"served_c{c}_ratio_vs_in_process"] > 0
