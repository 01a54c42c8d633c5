"""The side-by-side report: arms as columns, headline metrics with 95% intervals as rows, the
human split-half reference beside them; the LLM arms' option order effects (report/position.py);
PNG plots of answer distributions, subgroup JS by level, a coefficient forest plot and the
position effects. `write_report` writes report.md, report.html (plots
embedded) and plots/*.png into a folder and returns their paths.
"""

from __future__ import annotations

import base64
import html
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, never a window
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from fidelity_exp.metrics import registry  # noqa: E402
from fidelity_exp.metrics.regression import Z_CRIT, term_key, terms_in  # noqa: E402
from fidelity_exp.metrics.subgroup import level_key  # noqa: E402
from fidelity_exp.report import position, verdict  # noqa: E402
from fidelity_exp.study.spec import StudySpec  # noqa: E402


def arm_keys(metrics: dict, arms: list[str]) -> list[str]:
    """The keys (arm prefix removed) any of `arms` has, in first-seen order."""
    seen: dict[str, None] = {}
    for arm in arms:
        head = f"{arm}/"
        seen.update((k[len(head):], None) for k in metrics if k.startswith(head))
    return list(seen)


def headline_keys(metrics: dict, arms: list[str]) -> list[str]:
    """The rows of the table: the registry's headline keys these arms have, in declaration order."""
    return registry.headline_keys(arm_keys(metrics, arms))


def _num(x) -> float:
    return np.nan if x is None else float(x)


def table(metrics: dict, arms: list[str]) -> pd.DataFrame:
    rows = []
    for key in headline_keys(metrics, arms):
        cells = [verdict.cell(metrics, registry.arm_key(arm, key)) for arm in arms]
        reference = verdict.fmt(metrics.get(registry.reference_key(key)))
        if all(c == "—" for c in cells) and reference == "—":
            continue
        rows.append([key, registry.direction_words(key), *cells, reference])
    return pd.DataFrame(rows, columns=["metric", "direction", *arms, "human split-half"])


# --- plots --------------------------------------------------------------------------------


def _freqs(frame: pd.DataFrame, column: str, codes) -> np.ndarray:
    counts = np.array([(frame[column].astype(object) == c).sum() for c in codes], dtype=float)
    return counts / counts.sum() if counts.sum() else counts


def plot_distributions(spec: StudySpec, human: pd.DataFrame, synthetic: dict[str, pd.DataFrame], path: Path) -> None:
    qs = spec.questions
    cols = min(3, len(qs))
    rows = math.ceil(len(qs) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.2 * rows), squeeze=False)
    sides = {"human": human, **synthetic}
    width = 0.8 / len(sides)
    for ax, q in zip(axes.ravel(), qs):
        x = np.arange(len(q.options))
        for i, (name, frame) in enumerate(sides.items()):
            ax.bar(x + i * width - 0.4 + width / 2, _freqs(frame, q.column, q.codes), width, label=name)
        ax.set_title(q.column, fontsize=10)
        ax.set_xticks(x, [str(t)[:14] for t in q.options.values()], rotation=35, ha="right", fontsize=7)
        ax.set_ylabel("share")
    for ax in axes.ravel()[len(qs):]:
        ax.axis("off")
    axes.ravel()[0].legend(fontsize=7)
    fig.suptitle(f"{spec.name}: answer distributions, human vs each arm")
    save_figure(fig, path)


def plot_subgroup_js(spec: StudySpec, metrics: dict, arms: list[str], path: Path) -> bool:
    if not spec.subgroups:
        return False
    fig, axes = plt.subplots(1, len(spec.subgroups), figsize=(5 * len(spec.subgroups), 3.5), squeeze=False)
    width = 0.8 / max(len(arms), 1)
    for ax, sg in zip(axes.ravel(), spec.subgroups):
        x = np.arange(len(sg.levels))
        for i, arm in enumerate(arms):
            values = [metrics.get(registry.arm_key(arm, level_key(sg.name, lv))) for lv in sg.levels]
            ax.bar(x + i * width - 0.4 + width / 2, [_num(v) for v in values], width, label=arm)
        ax.set_xticks(x, list(sg.levels), rotation=30, ha="right", fontsize=8)
        ax.set_title(f"subgroup {sg.name}", fontsize=10)
        ax.set_ylabel("JS distance (lower is better)")
        ax.set_ylim(0, 1)
    axes.ravel()[0].legend(fontsize=7)
    save_figure(fig, path)
    return True


def plot_coefficients(spec: StudySpec, metrics: dict, arms: list[str], path: Path) -> bool:
    if not spec.regressions or not arms:
        return False
    fig, axes = plt.subplots(1, len(spec.regressions), figsize=(6 * len(spec.regressions), 4.5), squeeze=False)
    for ax, reg in zip(axes.ravel(), spec.regressions):
        terms = terms_in(metrics, arms[0], reg.name)
        sides = [("human", arms[0], "human")] + [(arm, arm, "synthetic") for arm in arms]
        step = 0.8 / len(sides)
        for i, (label, arm, side) in enumerate(sides):
            coef = np.array([_num(metrics.get(registry.arm_key(arm, term_key(reg.name, t, "coef", side))))
                             for t in terms])
            se = np.array([_num(metrics.get(registry.arm_key(arm, term_key(reg.name, t, "se", side)))) for t in terms])
            y = np.arange(len(terms)) + i * step - 0.4 + step / 2
            ax.errorbar(coef, y, xerr=Z_CRIT * se, fmt="o", ms=4, capsize=2, label=label)
        ax.axvline(0, color="grey", lw=0.8)
        ax.set_yticks(np.arange(len(terms)), terms, fontsize=8)
        ax.set_title(f"{reg.name} ({reg.family}): coefficients with 95% intervals", fontsize=10)
        ax.legend(fontsize=7)
    save_figure(fig, path)
    return True


# --- the report ---------------------------------------------------------------------------


def write_report(folder: Path, spec: StudySpec, human: pd.DataFrame, synthetic: dict[str, pd.DataFrame],
                 metrics: dict, *, title: str, fdr: float = 0.05, components: tuple[str, ...] | None = None
                 ) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "plots").mkdir(exist_ok=True)
    arms = list(synthetic)
    plots = [folder / "plots" / "distributions.png"]
    plot_distributions(spec, human, synthetic, plots[0])
    if plot_subgroup_js(spec, metrics, arms, folder / "plots" / "subgroup_js.png"):
        plots.append(folder / "plots" / "subgroup_js.png")
    if plot_coefficients(spec, metrics, arms, folder / "plots" / "coefficients.png"):
        plots.append(folder / "plots" / "coefficients.png")
    order_arms = position.arms_with_position(metrics, arms)
    order_tab = position.table(spec, human, synthetic, metrics, order_arms) if order_arms else None
    if order_arms:
        plots.append(folder / "plots" / "position.png")
        position.plot(spec, metrics, order_arms, plots[-1])

    words, humans_tab, pairs_tab, verdict_md = _verdict(metrics, arms, fdr, components)
    tab = table(metrics, arms)
    intro = (f"Study `{spec.name}` v{spec.version}: {len(human)} evaluation humans; arms: {', '.join(arms)}. "
             "Cells are point values with bootstrap 95% intervals (bias-aware by default: see METRICS.md "
             "section 8); the last column is the level sampling noise alone produces between two halves of the "
             "humans (half-size samples: the verdict's swap null median is the matched-size level). Undefined "
             "values are shown as —.")
    md = [f"# {title}", "", verdict_md, "", "## All headline metrics", "", intro, "", _markdown_table(tab), ""]
    if order_tab is not None:
        md += ["## Option order (position)", "", position.INTRO, "", _markdown_table(order_tab), ""]
    md += [f"![{p.stem}](plots/{p.name})" for p in plots]
    (folder / "report.md").write_text("\n".join(md) + "\n", encoding="utf-8")
    answer = verdict.short_answer(metrics, arms, _component_keys(metrics, arms, components), fdr)
    body = ("<h2>The answer</h2><p>" + html.escape(" ".join(answer)) + "</p>"
            "<h2>Verdict</h2><ul>" + "".join(f"<li>{html.escape(w)}</li>" for w in words) + "</ul>"
            f"<p>{html.escape(VERDICT_INTRO.format(fdr=fdr))}</p>{humans_tab.to_html(index=False, escape=True)}")
    if pairs_tab is not None:
        body += f"<p>{html.escape(PAIRS_INTRO)}</p>{pairs_tab.to_html(index=False, escape=True)}"
    body += f"<h2>All headline metrics</h2><p>{html.escape(intro)}</p>{tab.to_html(index=False, escape=True)}"
    if order_tab is not None:
        body += (f"<h2>Option order (position)</h2><p>{html.escape(position.INTRO)}</p>"
                 f"{order_tab.to_html(index=False, escape=True)}")
    page = html_page(title, body, plots)
    (folder / "report.html").write_text(page, encoding="utf-8")
    return [folder / "report.md", folder / "report.html", *plots]


VERDICT_INTRO = ("Each cell: the value with its 95% interval; what the metric is when twins are as good as humans at "
                 "this sample size (the median over swaps of twins with their humans); and whether the arm is "
                 "distinguishable from the humans (Benjamini-Hochberg q <= {fdr:g}).")
PAIRS_INTRO = ("How much better the first arm is than the second (positive: better, in the metric's own direction), "
               "with its 95% interval over resampled humans and a paired swap test's p value.")


def _verdict(metrics: dict, arms: list[str], fdr: float, components: tuple[str, ...] | None):
    """The verdict's sentences, its tables and its markdown section (the report's and the MLflow
    run description's)."""
    keys = headline_keys(metrics, arms)
    components = list(components if components is not None else registry.default_components())
    pairs = [p for p in registry.compared_pairs(metrics) if p[0] in arms and p[1] in arms]
    humans_tab = verdict.against_humans(metrics, arms, keys, fdr)
    pairs_tab = verdict.arm_vs_arm(metrics, pairs, keys, fdr) if pairs else None
    component_keys = _component_keys(metrics, arms, components)
    words = verdict.sentences(metrics, arms, pairs, component_keys, fdr)
    md = [*short_form(metrics, arms, component_keys, fdr), "", "## Verdict", "", *[f"- {w}" for w in words], "",
          VERDICT_INTRO.format(fdr=fdr), "", _markdown_table(humans_tab)]
    if pairs_tab is not None:
        md += ["", PAIRS_INTRO, "", _markdown_table(pairs_tab)]
    return words, humans_tab, pairs_tab, "\n".join(md)


def _component_keys(metrics: dict, arms: list[str], components: tuple[str, ...] | None) -> list[str]:
    """The headline keys the score's components (the run's, else the default ones) are made of."""
    chosen = list(components if components is not None else registry.default_components())
    return registry.component_keys(headline_keys(metrics, arms), chosen)


def short_form(metrics: dict, arms: list[str], component_keys: list[str], fdr: float) -> list[str]:
    """Markdown lines: the answer in three sentences (did fine-tuning beat the base model, which
    arms are like the humans, which is best), then one row per arm with a mark per component."""
    return ["## The answer", "", " ".join(verdict.short_answer(metrics, arms, component_keys, fdr)), "",
            *verdict.compact_table(metrics, arms, component_keys, fdr)]


def run_description(metrics: dict, arms: list[str], *, fdr: float = 0.05,
                    components: tuple[str, ...] | None = None) -> str:
    """The MLflow run's description (markdown): the answer in three sentences and a compact table
    (`short_form`, within the first screen), then the headline metrics per arm with their
    intervals and the human split-half reference, then the verdict's long sentences."""
    words = _verdict(metrics, arms, fdr, components)[0]
    answer = short_form(metrics, arms, _component_keys(metrics, arms, components), fdr)
    return "\n".join([*answer, "", "## Headline metrics", "",
                      "Value [95% interval] per arm; last column: the human split-half reference.", "",
                      _markdown_table(table(metrics, arms)), "", "## Verdict", "", *[f"- {w}" for w in words]])


def save_figure(fig, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def html_page(title: str, body: str, plots: list[Path]) -> str:
    """A self-contained HTML page: `body`, then the PNG plots embedded (opens from MLflow's UI)."""
    images = "".join(
        f'<figure><img alt="{p.stem}" src="data:image/png;base64,{base64.b64encode(p.read_bytes()).decode()}">'
        f"<figcaption>{p.stem}</figcaption></figure>" for p in plots)
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>"
            "body{font-family:sans-serif;margin:2em;max-width:1200px}table{border-collapse:collapse}"
            "td,th{border:1px solid #ccc;padding:4px 8px;font-size:13px}th{background:#f3f3f3}"
            f"img{{max-width:100%}}</style></head><body><h1>{html.escape(title)}</h1>{body}{images}</body></html>")


def _markdown_table(tab: pd.DataFrame) -> str:
    lines = ["| " + " | ".join(tab.columns) + " |", "|" + "---|" * len(tab.columns)]
    lines += ["| " + " | ".join(map(str, row)) + " |" for row in tab.itertuples(index=False)]
    return "\n".join(lines)
