"""Two trials making the same first write into one MLflow experiment at the same moment.

MLflow's SQL store looks a row up, then inserts it when missing (a dataset of the experiment,
the experiment's description): two parallel trials both miss it and the second insert fails on
the unique key. `race_two_trials` makes that happen every time on a real store: a hook on the
store's own SQLAlchemy engine holds each thread's first INSERT into the table until the other
thread has reached its own (so both lookups came first), then lets both go."""

from __future__ import annotations

import threading
from pathlib import Path

import pandas as pd
import sqlalchemy
import yaml
from mlflow.tracking import MlflowClient

from ..conftest import tiny_frame, tiny_spec


def _log_pilot(client, experiment: str, run_id: str, folder: Path) -> None:
    from fidelity_exp.tracking.mlflow_run import TrackedRun
    from fidelity_exp.tracking.notebook import log_datasets

    frame = pd.DataFrame({"x": [1.0, 2.0, 3.0]}, index=pd.Index(["a", "b", "c"], name="id"))
    log_datasets(TrackedRun(client, run_id), [("pilot", frame, "training")], source="test")


def _describe(client, experiment: str, run_id: str, folder: Path) -> None:
    from fidelity_exp.study import load_spec_file
    from fidelity_exp.tracking.notebook import describe_experiment

    describe_experiment(client, experiment, load_spec_file(folder / "spec.yaml"))


RACES = {"datasets": _log_pilot, "experiment_tags": _describe}   # the table each write inserts into


def race_two_trials(uri: str, table: str, folder: Path) -> None:
    """Both trials' writes into `table` race on the store at `uri`; both must succeed."""
    write = RACES[table]
    tiny_frame().to_csv(folder / "tiny.csv", index=False)   # the study _describe names
    (folder / "spec.yaml").write_text(yaml.safe_dump(tiny_spec(folder / "tiny.csv")))
    client = MlflowClient(uri)
    experiment = client.create_experiment(f"race-{table}", artifact_location=(folder / "artifacts").as_uri())
    runs = [client.create_run(experiment).info.run_id for _ in range(2)]
    both_looked, held = threading.Barrier(2, timeout=20), set()

    def hold_first_insert(conn, cursor, statement, parameters, context, executemany):
        if statement.lstrip().upper().startswith(f"INSERT INTO {table.upper()} ") \
                and threading.get_ident() not in held:
            held.add(threading.get_ident())
            both_looked.wait()

    engine = client._tracking_client.store.engine
    sqlalchemy.event.listen(engine, "before_cursor_execute", hold_first_insert)
    errors = []

    def one(run_id: str) -> None:
        try:
            write(client, experiment, run_id, folder)
        except Exception as e:   # noqa: BLE001 - reported below
            errors.append(e)

    try:
        threads = [threading.Thread(target=one, args=(run_id,)) for run_id in runs]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
    finally:
        sqlalchemy.event.remove(engine, "before_cursor_execute", hold_first_insert)
    assert len(held) == 2, "the two inserts did not race"
    assert errors == [], [str(e)[:300] for e in errors]
    if table == "datasets":
        for run_id in runs:
            assert [d.dataset.name for d in client.get_run(run_id).inputs.dataset_inputs] == ["pilot"]
    else:
        assert client.get_experiment(experiment).tags["mlflow.note.content"].startswith("Study **tiny**")
