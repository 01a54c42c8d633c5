"""The sweep report, logged to the parent run: trials table, pilot-size curve, Optuna plots.

- `trials.csv` / the table: every trial's number, state, objective, params, timing (trial
  duration from ask to tell; the run's own time and its tracking time), every arm's
  fidelity_score and the LLM arms' mean primacy and order sensitivity (trials.csv: every metric).
- `plots/pilot_size.png` when `pilot.n` varies: each headline metric against `pilot.n`, one
  line per arm (mean over the trials at that size, i.e. over seeds, with the min-max range
  shaded), and the human split-half reference as a grey band (its min-max over those trials).
- `plots/optimization_history.png`, `plots/param_importances.png`: Optuna's own matplotlib
  plots, when the study has what they need (importances: two or more complete trials and a
  param that varies).
"""

from __future__ import annotations

import html
import logging
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from fidelity_exp.inference.regressions import ESTIMATORS, rectified_key, truth_terms  # noqa: E402
from fidelity_exp.metrics import registry  # noqa: E402
from fidelity_exp.metrics.position import MEASURES, mean_key  # noqa: E402
from fidelity_exp.metrics.score import SCORE  # noqa: E402
from fidelity_exp.report import arm_keys, html_page, save_figure  # noqa: E402

log = logging.getLogger(__name__)
POSITION_MEANS = tuple(f"/{mean_key(m)}" for m in MEASURES)   # the LLM arms' option order effects, per trial


def trials_frame(study, runs: pd.DataFrame | None) -> pd.DataFrame:
    """One row per trial: Optuna's record joined with its MLflow run's metrics."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        duration = ((t.datetime_complete - t.datetime_start).total_seconds()
                    if t.datetime_complete and t.datetime_start else np.nan)
        rows.append({"trial": t.number, "state": t.state.name, "value": t.value, "duration_s": duration,
                     "interrupted": bool(t.user_attrs.get("interrupted", False)), "error": t.user_attrs.get("error"),
                     "retry_of": t.system_attrs.get("failed_trial"),   # RetryHeartbeatStaleTrialCallback's record
                     **{f"param:{k}": v for k, v in t.params.items()}})
    frame = pd.DataFrame(rows)
    if runs is not None and len(runs) and len(frame):
        frame = frame.merge(runs, on="trial", how="left")
    if "timing/run_s" in frame:
        compute = frame["timing/run_s"] - frame["timing/tracking_s"]
        frame["tracking_share"] = frame["timing/tracking_s"] / frame["duration_s"]
        frame["sweep_overhead_share"] = (frame["duration_s"] - frame["timing/run_s"]) / frame["duration_s"]
        frame["overhead_share"] = 1 - compute / frame["duration_s"]
    return frame


def _curve_keys(frame: pd.DataFrame, arms: list[str]) -> list[str]:
    """The registry's curve keys (one per declaration) the arms have, in declaration order."""
    return registry.curve_keys(arm_keys(dict.fromkeys(frame.columns), arms))


def plot_pilot_size(frame: pd.DataFrame, path: Path) -> bool:
    if "param:pilot.n" not in frame or frame["param:pilot.n"].nunique() < 2:
        return False
    done = frame[frame.state == "COMPLETE"]
    arms = sorted({c.split("/", 1)[0] for c in done.columns if c.endswith(f"/{SCORE}")
                   and not c.startswith(registry.REFERENCE)})
    keys = _curve_keys(done, arms)
    if not keys or done.empty:
        return False
    cols = min(3, len(keys))
    rows = -(-len(keys) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.6 * rows), squeeze=False)
    for ax, key in zip(axes.flat, keys):
        ref = registry.reference_key(key)
        if ref in done:
            band = done.groupby("param:pilot.n")[ref].agg(["min", "max"]).dropna()
            if len(band):
                ax.fill_between(band.index, band["min"], band["max"], color="0.8", label="human split-half")
        for arm in arms:
            col = registry.arm_key(arm, key)
            if col not in done:
                continue
            stats = done.groupby("param:pilot.n")[col].agg(["mean", "min", "max", "count"]).dropna()
            if stats.empty:
                continue
            line, = ax.plot(stats.index, stats["mean"], marker="o", label=arm)
            ax.fill_between(stats.index, stats["min"], stats["max"], color=line.get_color(), alpha=0.15)
        ax.set_xscale("log")
        ax.set_xticks(sorted(done["param:pilot.n"].unique()))
        ax.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.get_xaxis().set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_title(key, fontsize=9)
        ax.set_xlabel("pilot.n")
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.suptitle("Fidelity vs pilot size: mean over seeds, shaded min-max; grey: human split-half reference",
                 fontsize=10)
    save_figure(fig, path)
    return True


BUDGET = "param:pilot.finetune_fraction"


def coverage_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Per regression term and estimator, over complete trials: how often the interval held the
    full-data fit (`truth/...`), the mean interval width, and (PPI) the median effective n; per
    fine-tuning share and pilot size when a budget sweep varies them."""
    done = frame[frame.state == "COMPLETE"] if len(frame) else frame
    by = [c for c in (BUDGET, "param:pilot.n") if c in done and done[c].nunique() > 1]
    if by:
        parts = []
        for key, group in done.groupby(by):
            values = key if isinstance(key, tuple) else (key,)
            parts.append(coverage_table(group.drop(columns=by)).assign(**dict(zip(by, values))))
        return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()
    rows = []
    for reg, term, col in truth_terms(done.columns):
        for est in ESTIMATORS:
            low, high = rectified_key(est, reg, term, "ci_low"), rectified_key(est, reg, term, "ci_high")
            if low not in done or high not in done:
                continue
            ok = done[[low, high, col]].dropna()
            if ok.empty:
                continue
            hit = (ok[low] <= ok[col]) & (ok[col] <= ok[high])
            ess = done.get(rectified_key(est, reg, term, "effective_n"))
            rows.append({"regression": reg, "term": term, "estimator": est, "trials": len(ok),
                         "coverage": hit.mean(), "mean_width": (ok[high] - ok[low]).mean(),
                         "median_effective_n": float(ess.median()) if ess is not None else np.nan})
    return pd.DataFrame(rows)


def plot_coverage(table: pd.DataFrame, path: Path, nominal: float = 0.95) -> bool:
    if table.empty or any(c in table for c in (BUDGET, "param:pilot.n")):
        return False   # a budget sweep: see budget.png and coverage.csv
    regs = list(dict.fromkeys(table.regression))
    fig, axes = plt.subplots(len(regs), 2, figsize=(13, 3.8 * len(regs)), squeeze=False)
    for (ax_c, ax_w), reg in zip(axes, regs):
        sub = table[table.regression == reg]
        terms = list(dict.fromkeys(sub.term))
        x = np.arange(len(terms))
        for k, est in enumerate(ESTIMATORS):
            e = sub[sub.estimator == est].set_index("term").reindex(terms)
            ax_c.bar(x + (k - 1) * 0.27, e.coverage, width=0.27, label=est)
            ax_w.bar(x + (k - 1) * 0.27, e.mean_width, width=0.27, label=est)
        ax_c.axhline(nominal, color="k", lw=1, ls="--")
        ax_c.set_ylim(0, 1.02)
        ax_c.set_title(f"{reg}: coverage of the {nominal:.0%} intervals ({int(sub.trials.max())} draws)", fontsize=9)
        ax_w.set_title(f"{reg}: mean interval width", fontsize=9)
        for ax in (ax_c, ax_w):
            ax.set_xticks(x)
            ax.set_xticklabels(terms, rotation=45, ha="right", fontsize=7)
        ax_c.legend(fontsize=7)
    save_figure(fig, path)
    return True


def plot_budget(frame: pd.DataFrame, path: Path) -> bool:
    """Rectified interval width against the share of the pilot that fine-tunes, one line per
    pilot size, beside the pilot-only width (all humans, no model)."""
    key = BUDGET
    done = frame[frame.state == "COMPLETE"] if len(frame) else frame
    widths = [(reg, rectified_key("ppi", reg, "width", "mean")) for reg in
              dict.fromkeys(reg for reg, _, _ in truth_terms(done.columns))]
    widths = [(reg, col) for reg, col in widths if col in done]
    if key not in done or done[key].nunique() < 2 or not widths:
        return False
    fig, axes = plt.subplots(1, len(widths), figsize=(6 * len(widths), 4), squeeze=False)
    sizes = sorted(done["param:pilot.n"].unique()) if "param:pilot.n" in done else [None]
    for ax, (reg, col) in zip(axes.flat, widths):
        for size in sizes:
            sub = done if size is None else done[done["param:pilot.n"] == size]
            stats = sub.groupby(key)[col].agg(["mean", "min", "max"])
            line, = ax.plot(stats.index, stats["mean"], marker="o", label=f"PPI, pilot.n={size}")
            ax.fill_between(stats.index, stats["min"], stats["max"], color=line.get_color(), alpha=0.15)
            human = sub[rectified_key("pilot_only", reg, "width", "mean")].mean()
            ax.axhline(human, color=line.get_color(), ls="--", lw=1, label=f"all {size} humans, no model")
        ax.set_xlabel("share of the pilot that fine-tunes (pilot.finetune_fraction)")
        ax.set_ylabel("mean 95% interval width")
        ax.set_title(f"{reg}: rectified width by budget split (mean over seeds, min-max shaded)", fontsize=9)
        ax.legend(fontsize=7)
    save_figure(fig, path)
    return True


def _optuna_plot(kind: str, study, path: Path) -> str | None:
    """Optuna's matplotlib plot `kind`; None when drawn, else why not."""
    import optuna.visualization.matplotlib as ovm
    from optuna.exceptions import ExperimentalWarning

    try:
        with warnings.catch_warnings():
            # Optuna marks its matplotlib backend experimental (not deprecated); the plots are stable.
            warnings.simplefilter("ignore", ExperimentalWarning)
            ax = getattr(ovm, f"plot_{kind}")(study)
    except (ValueError, RuntimeError, ZeroDivisionError) as e:
        return f"{type(e).__name__}: {e}"
    fig = np.ravel(ax)[0].figure
    fig.set_size_inches(7, 4)
    save_figure(fig, path)
    return None


def _markdown(tab: pd.DataFrame) -> str:
    def cell(v) -> str:
        if isinstance(v, float):
            return "—" if not np.isfinite(v) else f"{v:.4g}"
        return "—" if v is None else str(v).replace("|", "/")
    lines = ["| " + " | ".join(tab.columns) + " |", "|" + "---|" * len(tab.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in tab.itertuples(index=False)]
    return "\n".join(lines)


def write_sweep_report(folder: Path, study, runs: pd.DataFrame | None, *, objective: str,
                       grid: bool) -> list[Path]:
    from optuna.trial import TrialState

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "plots").mkdir(exist_ok=True)
    frame = trials_frame(study, runs)
    frame.to_csv(folder / "trials.csv", index=False)
    plots, notes = [], []
    if plot_pilot_size(frame, folder / "plots" / "pilot_size.png"):
        plots.append(folder / "plots" / "pilot_size.png")
    coverage = coverage_table(frame)
    if len(coverage):
        coverage.to_csv(folder / "coverage.csv", index=False)
        if plot_coverage(coverage, folder / "plots" / "coverage.png"):
            plots.append(folder / "plots" / "coverage.png")
    if plot_budget(frame, folder / "plots" / "budget.png"):
        plots.append(folder / "plots" / "budget.png")
    complete = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    for kind in ("optimization_history", "param_importances"):
        why = "no complete trial" if not complete else _optuna_plot(kind, study, folder / "plots" / f"{kind}.png")
        if why is None:
            plots.append(folder / "plots" / f"{kind}.png")
        else:
            notes.append(f"{kind.replace('_', ' ')}: not drawn ({why})")

    counts = frame.state.value_counts().to_dict() if len(frame) else {}
    lines = [f"Study `{study.study_name}`: objective `{objective}` ({study.direction.name.lower()}); "
             f"trials: " + ", ".join(f"{v} {k.lower()}" for k, v in sorted(counts.items())) + "."]
    if grid:
        lines.append("A grid is a designed experiment: no trial is picked as best.")
    elif complete:
        best = study.best_trial
        lines.append(f"Best trial {best.number}: {objective} = {best.value:.4g} with {best.params}. It was chosen "
                     "on the humans these trials were scored on (the validation humans when score_on=validation): "
                     "report the best params' result on the evaluation humans from a separate run.")
    if "overhead_share" in frame and frame.overhead_share.notna().any():
        ok = frame[frame.state == "COMPLETE"]
        lines.append(f"Per-trial overhead (median over complete trials): tracking "
                     f"{ok.tracking_share.median():.1%} of the trial's time, launching and sweeping "
                     f"{ok.sweep_overhead_share.median():.1%}; trial duration median {ok.duration_s.median():.1f} s.")
    lines += notes
    if len(coverage):
        keys = [c for c in (BUDGET, "param:pilot.n") if c in coverage] + ["estimator"]
        summary = coverage.groupby(keys).agg(coverage=("coverage", "mean"), width=("mean_width", "mean"))
        lines.append("Coverage of the 95% intervals against the full-data fit, averaged over terms: " + "; ".join(
            f"{k} {r.coverage:.1%} (mean width {r.width:.3g})" for k, r in summary.iterrows()) + " (coverage.csv).")
    shown = [c for c in frame.columns if c in ("trial", "state", "value", "duration_s", "overhead_share", "error")
             or c.startswith("param:") or c.endswith((f"/{SCORE}", *POSITION_MEANS))]
    table = frame[shown].copy() if len(frame) else frame
    md = ["# Sweep report", "", *[f"- {x}" for x in lines], "", _markdown(table) if len(table) else "(no trials)", ""]
    md += [f"![{p.stem}](plots/{p.name})" for p in plots]
    (folder / "report.md").write_text("\n".join(md) + "\n", encoding="utf-8")
    body = ("<ul>" + "".join(f"<li>{html.escape(x)}</li>" for x in lines) + "</ul>"
            + (table.to_html(index=False, float_format=lambda v: f"{v:.4g}") if len(table) else ""))
    page = html_page(f"Sweep report: {study.study_name}", body, plots)
    (folder / "report.html").write_text(page, encoding="utf-8")
    return [folder / "report.md", folder / "report.html", folder / "trials.csv", *plots]
