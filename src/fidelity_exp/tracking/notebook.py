"""The MLflow UI as the lab notebook: where to look, the story on the run page, the data sets
a run read and wrote, the twins' interviews as traces, and the machine's load.

- Addresses open the view that lists runs (`?workflowType=machine_learning`; MLflow 3 opens an
  experiment in its GenAI view otherwise); `ui_base` is the tracking server itself for an
  http(s) store, else `tracking.ui_url` (default: what `make ui` serves).
- The run's description (`mlflow.note.content`, markdown) is the report's verdict; the
  experiment's says which study it holds.
- Data sets are MLflow dataset inputs (`pilot`, `evaluation` or `validation`, `synthetic:<arm>`),
  with MLflow's digests, so runs on the same humans can be found by digest.
- Traces: for a sample of twins per LLM arm, one trace per twin, one span per question (the
  question as the twin saw it; its option probabilities and sampled answer), the human's answer
  as an expectation and match/mismatch as feedback. Only evaluation (or validation) humans'
  twins: no pilot answer is ever in a trace.
"""

from __future__ import annotations

import contextlib
import getpass
import logging
import os
import sys
import time
from typing import Any, Iterator, Mapping, Sequence

import pandas as pd

from fidelity_exp.metrics.registry import register_other
from fidelity_exp.study.spec import StudySpec
from fidelity_exp.tracking.mlflow_run import retry_lost_race

log = logging.getLogger(__name__)
register_other("system/*")   # MLflow's system metrics (cpu, memory, ...), sampled while the run runs
NOTE = "mlflow.note.content"
UI_DEFAULT = "http://127.0.0.1:5000"    # `make ui`
VIEW = "workflowType=machine_learning"


def ui_base(tracking_uri: str, ui_url: str | None = None) -> str:
    if tracking_uri.startswith(("http://", "https://")):
        return tracking_uri.rstrip("/")
    return (ui_url or UI_DEFAULT).rstrip("/")


def experiment_address(base: str, experiment_id: str) -> str:
    return f"{base}/#/experiments/{experiment_id}?{VIEW}"


def run_address(base: str, experiment_id: str, run_id: str) -> str:
    return f"{base}/#/experiments/{experiment_id}/runs/{run_id}?{VIEW}"


def source_tags() -> dict[str, str]:
    """MLflow's own source tags, so the runs table's Source and User columns fill."""
    entry = "python -m fidelity_exp" if sys.argv and sys.argv[0].endswith("__main__.py") else (sys.argv[0] or "python")
    return {"mlflow.source.name": entry, "mlflow.source.type": "LOCAL", "mlflow.user": _user()}


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def describe_experiment(client, experiment_id: str, spec: StudySpec) -> None:
    """The experiment's description, once (a user's own edit in the UI is kept); parallel trials
    starting together may race to write it (`retry_lost_race`: the loser finds it written)."""
    retry_lost_race(lambda: _describe(client, experiment_id, spec), f"the description of experiment {experiment_id}")


def _describe(client, experiment_id: str, spec: StudySpec) -> None:
    experiment = client.get_experiment(experiment_id)
    if experiment.tags.get(NOTE):
        return
    client.set_experiment_tag(experiment_id, NOTE, (
        f"Study **{spec.name}** (v{spec.version}): {len(spec.questions)} questions "
        f"({', '.join(spec.question_columns)}), fidelity of synthetic twins against held-out humans. "
        "Each run: a pilot, the arms' twins, the metrics (METRICS.md) and the report; the run's description "
        "is its verdict."))


def log_datasets(tracked, sets: Sequence[tuple[str, pd.DataFrame, str]], source: str) -> None:
    """Each (name, frame, context) as an MLflow dataset input of the run."""
    import mlflow
    from mlflow.data.code_dataset_source import CodeDatasetSource
    from mlflow.entities import DatasetInput, InputTag

    inputs = []
    for name, frame, context in sets:
        with _quiet():
            dataset = mlflow.data.from_pandas(frame.reset_index(), name=name, source=CodeDatasetSource(
                {"mlflow.source.name": source}))
            entity = dataset._to_mlflow_entity()
        inputs.append(DatasetInput(entity, tags=[InputTag("mlflow.data.context", context)]))
    tracked.log_inputs(inputs)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    import warnings

    with warnings.catch_warnings():   # MLflow warns that a pandas frame has no schema for ints with NaN
        warnings.simplefilter("ignore")
        yield


def log_twin_traces(tracked, tracking_uri: str, experiment_id: str, spec: StudySpec, arm: str,
                    twins: pd.DataFrame, humans: pd.DataFrame, n: int, orders: Sequence[Sequence[Any]]) -> float:
    """The first `n` twins of `arm` as traces (see the module docstring); `orders[i][j]`: the
    option order twin i saw at question j (None: the spec's). Returns the seconds it took."""
    import mlflow

    from fidelity_exp.llm.interview import question_text
    from fidelity_exp.study.synthetic_file import PROB_SEP

    started = time.perf_counter()
    client = tracked.client
    with _global_tracking_uri(tracking_uri):   # traces are exported through MLflow's global tracer
        ids = []
        for i, row in enumerate(twins.head(n).to_dict("records")):   # records keep each column's type
            human = humans.loc[[row["twin_of"]]].to_dict("records")[0]
            persona = {c: _plain(human[c]) for c in spec.given_columns}
            who = _plain(row["twin_of"])
            who = int(who) if isinstance(who, float) and who.is_integer() else who
            root = client.start_trace(f"{arm}: twin of {who}", inputs={"persona": persona},
                                      experiment_id=experiment_id, run_id=tracked.run_id,
                                      tags={"arm": arm, "twin_of": str(who)})
            answers = {}
            for j, q in enumerate(spec.questions):
                probabilities = {str(q.options[c]): round(float(row[f"{q.column}{PROB_SEP}{c}"]), 4)
                                 for c in q.codes if f"{q.column}{PROB_SEP}{c}" in row}
                answer = _plain(row[q.column])
                span = client.start_span(q.column, trace_id=root.trace_id, parent_id=root.span_id,
                                         inputs={"question": question_text(q, orders[i][j] if orders else None)})
                client.end_span(root.trace_id, span.span_id, outputs={
                    "option_probabilities": probabilities, "answer": answer,
                    "answer_text": q.options.get(answer) if answer is not None else None})
                answers[q.column] = answer
            client.end_trace(root.trace_id, outputs={"answers": answers})
            ids.append((root.trace_id, human, answers))
        mlflow.flush_trace_async_logging()
        for trace_id, human, answers in ids:
            for q in spec.questions:
                truth = _plain(human[q.column])
                if truth is None:
                    continue
                mlflow.log_expectation(trace_id=trace_id, name=f"human/{q.column}", value=truth)
                mlflow.log_feedback(trace_id=trace_id, name=f"match/{q.column}", value=answers[q.column] == truth)
    return time.perf_counter() - started


@contextlib.contextmanager
def _global_tracking_uri(uri: str) -> Iterator[None]:
    """MLflow's global tracking URI set to `uri` for the body, then exactly as it was (MLflow's
    setter also writes $MLFLOW_TRACKING_URI, which the rest of this process reads)."""
    import mlflow
    from mlflow.tracking._tracking_service import utils

    before, env = utils._tracking_uri, os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        utils.set_tracking_uri(before)
        if env is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = env


def _plain(value: Any) -> Any:
    if value is None or (isinstance(value, float) and value != value) or pd.isna(value):
        return None
    return value.item() if hasattr(value, "item") else value


@contextlib.contextmanager
def system_metrics(run_id: str, tracking_uri: str, enabled: bool) -> Iterator[None]:
    """MLflow's system metrics (CPU, memory, disk, network; GPU when there is one) sampled into
    the run every 10 s while the body runs. MLflow's monitor publishes a sample only after a full
    interval, so a run shorter than that would have none: the one taken at the start is then
    published when the body ends."""
    if not enabled:
        yield
        return
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)   # its start/stop lines

    monitor = SystemMetricsMonitor(run_id, sampling_interval=10, samples_before_logging=1,
                                   tracking_uri=tracking_uri)
    monitor.start()
    try:
        yield
    finally:
        monitor.finish()
        if getattr(monitor, "_logging_step", 1) == 0:   # nothing published: a run shorter than the interval
            try:
                if not monitor.aggregate_metrics():   # ended before the monitor's thread took its first sample
                    monitor.collect_metrics()
                monitor.publish_metrics(monitor.aggregate_metrics())
                monitor.mlflow_logger.flush()
            except Exception as e:   # MLflow's own monitor swallows its logging errors too
                log.debug("the short run's system metrics were not logged: %s", e)


NOTE_LIMIT = 5900   # characters MLflow keeps of a tag value here (tracking.mlflow_run.MAX_PARAM_LENGTH)


def verdict_note(markdown: str, addresses: Mapping[str, str]) -> str:
    """The run description: the verdict, then where the full report is (the verdict cut at a
    line when it is longer than a tag holds)."""
    where = "Full report and metrics, the run's artifacts: " + ", ".join(f"`{v}`" for v in addresses.values())
    if len(markdown) + len(where) + 4 > NOTE_LIMIT:
        cut = markdown[: NOTE_LIMIT - len(where) - 80].rsplit("\n", 1)[0]
        markdown = cut + "\n\n(the verdict continues in the report)"
    return f"{markdown}\n\n{where}\n"
