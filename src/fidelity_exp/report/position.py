"""The report's position section (METRICS.md section 12): per LLM arm and question, how much
the twins favour the first option shown (primacy) and how much their answer probabilities move
when the options are reversed (order sensitivity), beside the share of answers on the first
option in spec order, humans and twins (what a position bias shows up as in the answers)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from fidelity_exp.metrics import registry
from fidelity_exp.metrics.position import MEASURES, mean_key, question_key
from fidelity_exp.report import verdict
from fidelity_exp.study.spec import StudySpec

LABELS = {"primacy": "primacy", "order_sensitivity": "order sensitivity"}
TITLES = {"primacy": "primacy (> 0: favours the option shown first)",
          "order_sensitivity": "order sensitivity (TV, forward vs reversed)"}
INTRO = ("Each LLM twin scored every question twice with its earlier answers held fixed: options in spec order "
         "and reversed. Primacy: how much more probability the option shown first gets than 1/K (> 0 favours "
         "whatever is printed first); order sensitivity: the total variation distance between the two scorings "
         "(0 = the order does not matter). First option: the share of answers on the spec's first option, humans "
         "and the arm's twins as simulated (`simulate.option_order`).")


def arms_with_position(metrics: dict, arms: list[str]) -> list[str]:
    return [arm for arm in arms if registry.arm_key(arm, mean_key("primacy")) in metrics]


def first_option_share(frame: pd.DataFrame, column: str, first) -> float | None:
    answered = frame[column].dropna().astype(object)
    return float((answered == first).mean()) if len(answered) else None


def table(spec: StudySpec, human: pd.DataFrame, synthetic: dict[str, pd.DataFrame], metrics: dict,
          arms: list[str]) -> pd.DataFrame:
    """Rows: questions, then the means; per arm each measure and the first-option share."""
    rows = []
    for q in spec.questions:
        row = [q.column, verdict.fmt(first_option_share(human, q.column, q.codes[0]))]
        for arm in arms:
            row += [verdict.fmt(metrics.get(registry.arm_key(arm, question_key(q.column, m)))) for m in MEASURES]
            row.append(verdict.fmt(first_option_share(synthetic[arm], q.column, q.codes[0])))
        rows.append(row)
    mean = ["mean over questions", ""]
    for arm in arms:
        mean += [verdict.cell(metrics, registry.arm_key(arm, mean_key(m))) for m in MEASURES] + [""]
    rows.append(mean)
    columns = ["question", "humans: first option"]
    for arm in arms:
        columns += [f"{arm}: {LABELS[m]}" for m in MEASURES] + [f"{arm}: first option"]
    return pd.DataFrame(rows, columns=columns)


def plot(spec: StudySpec, metrics: dict, arms: list[str], path: Path) -> None:
    from fidelity_exp.report import plt, save_figure

    fig, axes = plt.subplots(1, 2, figsize=(max(8, 1.1 * len(spec.questions) + 4), 3.8), squeeze=False)
    x = np.arange(len(spec.questions))
    width = 0.8 / max(len(arms), 1)
    for ax, measure in zip(axes.ravel(), MEASURES):
        for i, arm in enumerate(arms):
            values = [metrics.get(registry.arm_key(arm, question_key(q.column, measure))) for q in spec.questions]
            ax.bar(x + i * width - 0.4 + width / 2, [np.nan if v is None else v for v in values], width, label=arm)
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_xticks(x, [q.column for q in spec.questions], rotation=35, ha="right", fontsize=8)
        ax.set_title(TITLES[measure], fontsize=10)
    axes.ravel()[0].legend(fontsize=7)
    fig.suptitle(f"{spec.name}: option order effects of the LLM arms")
    save_figure(fig, path)
