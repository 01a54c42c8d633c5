"""The sweep report, logged to the parent run: trials table, pilot-size curve, Optuna plots.

- `trials.csv` / the table: every trial's number, state, objective, params, timing (trial
  duration from ask to tell; the run's own time and its tracking time) and headline metrics.
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

from fidelity_exp.report import html_page  # noqa: E402

log = logging.getLogger(__name__)
REFERENCE = "reference/human_split"
# The curve's panels: the summary score and one key per family (those the study defines).
CURVE_KEYS = ("fidelity_score", "divergence/js/mean", "heterogeneity/entropy_ratio/mean",
              "subgroup/*/js/mean", "coherence/*/spearman/abs_diff", "regression/*/sign_f1",
              "individual/accuracy/mean")


def trials_frame(study, runs: pd.DataFrame | None) -> pd.DataFrame:
    """One row per trial: Optuna's record joined with its MLflow run's metrics."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        duration = ((t.datetime_complete - t.datetime_start).total_seconds()
                    if t.datetime_complete and t.datetime_start else np.nan)
        rows.append({"trial": t.number, "state": t.state.name, "value": t.value, "duration_s": duration,
                     "interrupted": bool(t.user_attrs.get("interrupted", False)), "error": t.user_attrs.get("error"),
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
    keys = []
    for pattern in CURVE_KEYS:
        head, _, tail = pattern.partition("*")
        for arm in arms:
            found = sorted(c[len(arm) + 1:] for c in frame.columns if c.startswith(f"{arm}/{head}")
                           and c.endswith(tail) and "/ci_" not in c)
            found = [k for k in found if k == pattern or "*" in pattern]
            if found:
                keys.append(found[0])
                break
    return keys


def plot_pilot_size(frame: pd.DataFrame, path: Path) -> bool:
    if "param:pilot.n" not in frame or frame["param:pilot.n"].nunique() < 2:
        return False
    done = frame[frame.state == "COMPLETE"]
    arms = sorted({c.split("/", 1)[0] for c in done.columns if c.endswith("/fidelity_score")
                   and not c.startswith("reference")})
    keys = _curve_keys(done, arms)
    if not keys or done.empty:
        return False
    cols = min(3, len(keys))
    rows = -(-len(keys) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.6 * rows), squeeze=False)
    for ax, key in zip(axes.flat, keys):
        ref = f"{REFERENCE}/{key}"
        if ref in done:
            band = done.groupby("param:pilot.n")[ref].agg(["min", "max"]).dropna()
            if len(band):
                ax.fill_between(band.index, band["min"], band["max"], color="0.8", label="human split-half")
        for arm in arms:
            col = f"{arm}/{key}"
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
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
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
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
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
    shown = [c for c in frame.columns if c in ("trial", "state", "value", "duration_s", "overhead_share", "error")
             or c.startswith("param:") or c.endswith("/fidelity_score")]
    table = frame[shown].copy() if len(frame) else frame
    md = ["# Sweep report", "", *[f"- {x}" for x in lines], "", _markdown(table) if len(table) else "(no trials)", ""]
    md += [f"![{p.stem}](plots/{p.name})" for p in plots]
    (folder / "report.md").write_text("\n".join(md) + "\n", encoding="utf-8")
    body = ("<ul>" + "".join(f"<li>{html.escape(x)}</li>" for x in lines) + "</ul>"
            + (table.to_html(index=False, float_format=lambda v: f"{v:.4g}") if len(table) else ""))
    page = html_page(f"Sweep report: {study.study_name}", body, plots)
    (folder / "report.html").write_text(page, encoding="utf-8")
    return [folder / "report.md", folder / "report.html", folder / "trials.csv", *plots]
