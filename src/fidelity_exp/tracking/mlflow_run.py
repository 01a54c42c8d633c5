"""One Hydra job = one MLflow run: store resolution, params, tags, artifacts, run status.

The store is `$MLFLOW_TRACKING_URI` if set (as MLflow users expect), else `tracking.uri`, else
`sqlite:///<paths.mlruns>/mlflow.db`; local stores get an explicit artifact location under
`tracking.artifact_root`, resolved against the start directory (not Hydra's job directory).

Runs go through `MlflowClient` with an explicit run id rather than MLflow's global "active
run", so parallel jobs and tests never write into each other's runs.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, Mapping, Optional

from omegaconf import DictConfig, OmegaConf

from fidelity_exp.errors import ConfigError, UserError
from fidelity_exp.paths import PathSettings, resolve, writable_folder
from fidelity_exp.settings import Checked, group, option

log = logging.getLogger(__name__)
MAX_PARAM_LENGTH = 6000   # MLflow 3's limit on a param value
BATCH = 100               # MLflow's limit on params per log_batch call
SPEC_PARAM_KEYS = ("name", "version", "source", "id")  # the rest of the spec goes in as an artifact


SCHEMES = ("sqlite", "file", "http", "https", "postgresql", "mysql", "mssql", "databricks")
KEY = r"(?!.*\.\.)(?!/)[\w .\-/]{1,250}"    # MLflow's rule for param, metric and tag keys
MAX_NAME = 250                              # run names and tag keys
MAX_TAG_VALUE = 8000
RACE_ATTEMPTS = 5                           # retry_lost_race
DUPLICATE_KEY = re.compile(r"UNIQUE constraint failed|IntegrityError|duplicate key value", re.I)


@group("tracking")
@dataclass
class TrackingSettings(Checked):
    """The `tracking` group (conf/tracking/mlflow.yaml)."""

    enabled: bool = True
    uri: Optional[str] = None
    artifact_root: Optional[str] = None
    experiment: str = option("default", pattern=r"[^\x00]{1,500}", what="an experiment name of 1 to 500 "
                             "characters")
    run_name: Optional[str] = option(None, pattern=rf"[^\x00]{{1,{MAX_NAME}}}", nullable=True,
                                     what=f"a run name of 1 to {MAX_NAME} characters, or null")
    tags: Dict[str, str] = option({})
    run_id: Optional[str] = option(None, pattern=r"[0-9a-f]{32}", nullable=True,
                                   what="an MLflow run id (32 hex digits), or null")
    ui_url: Optional[str] = option(None, pattern=r"https?://\S+", nullable=True,
                                   what="the MLflow UI's address (http://host:port), or null")
    traces_per_arm: int = option(25, ge=0, le=10_000, what="a number of twins from 0 (no traces) to 10000")
    datasets: bool = True
    system_metrics: bool = True
    heartbeat_s: int = option(30, ge=1, le=3600, what="seconds between a run's heartbeats, 1 to 3600")
    stale_after_s: int = option(300, ge=2, le=7 * 86400, what="seconds without a heartbeat after which a "
                                "RUNNING run is dead, 2 to 604800")

    def check(self) -> None:
        if self.stale_after_s <= self.heartbeat_s:
            raise ConfigError("stale_after_s", self.stale_after_s, f"expected more than tracking.heartbeat_s "
                              f"({self.heartbeat_s}): a live run would look dead between two heartbeats")
        if self.uri is not None:
            check_uri(self.uri, "uri")
        for k, v in self.tags.items():
            if not re.fullmatch(KEY, str(k)):
                raise ConfigError(f"tags.{k}", v, "expected a tag name of 1 to 250 letters, digits, spaces or _ - . / "
                                  "(no '..', not starting with '/')")
            if len(str(v)) > MAX_TAG_VALUE:
                raise ConfigError(f"tags.{k}", str(v)[:40] + "...", f"expected at most {MAX_TAG_VALUE} characters")


def check_uri(uri: str, key: str, origin: str = "config") -> None:
    """A tracking URI MLflow can open: a known scheme, and for a local store a folder this
    process can write to (checked before a run exists)."""
    scheme = urllib.parse.urlparse(uri).scheme.split("+")[0] if "://" in uri else ""
    if "://" in uri and scheme not in SCHEMES:
        raise ConfigError(key, uri, f"expected a tracking URI with one of the schemes {', '.join(SCHEMES)} "
                          "(e.g. sqlite:///mlruns/mlflow.db, http://host:5000), or a local folder", origin=origin)
    if scheme == "sqlite":
        path = uri.removeprefix("sqlite:///")
        if not path or path.startswith(":memory:"):
            raise ConfigError(key, uri, "expected a sqlite file (sqlite:///path/to/mlflow.db)", origin=origin)
        _writable(Path(path).parent, key, uri, origin)
    elif scheme in ("", "file"):
        _writable(urllib.parse.urlparse(uri).path if scheme else uri, key, uri, origin)
    elif scheme in ("http", "https"):
        _answers(uri, key, origin)


SERVER_PROBE_S = 5.0   # how long a tracking server may take to answer before the run is refused


def _answers(uri: str, key: str, origin: str) -> None:
    """A tracking server must answer (any HTTP status) within SERVER_PROBE_S: one request, no
    retries, instead of MLflow's minutes of retries before its first error."""
    try:
        urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=SERVER_PROBE_S).close()
    except urllib.error.HTTPError:
        return                      # it answered
    except (OSError, ValueError) as e:
        why = getattr(e, "reason", e)
        raise ConfigError(key, uri, f"expected a tracking server that answers: it does not ({why}, within "
                          f"{SERVER_PROBE_S:g} s); start it (`make cluster-up` starts the local one), or choose "
                          "another store (unset it for the local sqlite store)", origin=origin) from None


def _writable(folder, key: str, uri: str, origin: str) -> None:
    try:
        writable_folder(folder, key)
    except ConfigError as e:
        raise ConfigError(key, uri, e.expected, origin=origin) from None


def check_store(tracking: TrackingSettings, paths: PathSettings) -> str:
    """The run's tracking URI, checked before the run starts (the environment's
    MLFLOW_TRACKING_URI too), with the local artifact folder."""
    uri = tracking_uri(tracking, paths)
    if os.environ.get("MLFLOW_TRACKING_URI"):
        check_uri(uri, "MLFLOW_TRACKING_URI", origin="environment")
    else:
        check_uri(uri, "tracking.uri" if tracking.uri else "paths.mlruns")
    if _is_local(uri) and tracking.artifact_root:
        writable_folder(tracking.artifact_root, "tracking.artifact_root")
    return uri


def tracking_uri(tracking: TrackingSettings, paths: PathSettings) -> str:
    """$MLFLOW_TRACKING_URI, else `tracking.uri`, else the sqlite store under `paths.mlruns`."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    if tracking.uri:
        return _absolute_sqlite(tracking.uri)
    return "sqlite:///" + str(resolve(paths.mlruns) / "mlflow.db")


def _absolute_sqlite(uri: str) -> str:
    """`sqlite:///rel.db` is relative to the current directory: pin it to the start directory."""
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return "sqlite:///" + str(resolve(uri.removeprefix("sqlite:///")))
    return uri


def _is_local(uri: str) -> bool:
    return uri.startswith(("sqlite:", "file:")) or "://" not in uri


@contextmanager
def first_use_lock(uri: str) -> Iterator[None]:
    """Several processes opening one new sqlite store at once race to create its tables (MLflow's
    migrations, Optuna's schema) and all but one crash. An exclusive lock on `<file>.lock` beside
    the store makes the first one create them while the others wait. Other URLs: no lock."""
    if not uri.startswith("sqlite:///"):
        yield
        return
    path = Path(uri.removeprefix("sqlite:///"))
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:   # Windows: no flock; start the first process alone there
        yield
        return
    with open(path.with_name(path.name + ".lock"), "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def open_client(uri: str):
    """An MlflowClient whose store exists: created (or upgraded) under `first_use_lock`."""
    from mlflow.tracking import MlflowClient

    try:
        with first_use_lock(uri):
            client = MlflowClient(tracking_uri=uri)
            client.search_experiments(max_results=1)   # the first call creates the store's tables
    except Exception as e:   # the store cannot be reached or created: nothing has been written yet
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:500]
        raise UserError(f"tracking: the MLflow store {uri!r} cannot be opened: {first}") from None
    return client


def get_or_create_experiment(client, name: str, artifact_root: str | None, uri: str) -> str:
    from mlflow.exceptions import MlflowException

    found = client.get_experiment_by_name(name)
    if found is not None and found.lifecycle_stage == "deleted":   # deleted in the UI: its runs are in the trash
        raise UserError(f"tracking.experiment={name!r}: that experiment (id {found.experiment_id}) was deleted, e.g. "
                        "in the MLflow UI, and a deleted experiment takes no runs; restore it with "
                        f"`MLFLOW_TRACKING_URI={uri} mlflow experiments restore --experiment-id {found.experiment_id}`, "
                        "or log to another one with tracking.experiment=<name>")
    if found is not None:
        return found.experiment_id
    location = None
    if artifact_root and _is_local(uri):
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", name)
        location = (resolve(artifact_root) / safe).as_uri()
    try:
        return client.create_experiment(name, artifact_location=location)
    except MlflowException:  # created meanwhile by a parallel job
        found = client.get_experiment_by_name(name)
        if found is None:
            raise
        return found.experiment_id


def flatten(tree: Any, prefix: str = "") -> dict[str, str]:
    """{'a': {'b': 1}, 'c': [2]} -> {'a.b': '1', 'c.0': '2'}; values as text, within MLflow's limit."""
    out: dict[str, str] = {}
    if isinstance(tree, Mapping):
        for k, v in tree.items():
            out.update(flatten(v, f"{prefix}{k}."))
    elif isinstance(tree, (list, tuple)) and tree:
        for i, v in enumerate(tree):
            out.update(flatten(v, f"{prefix}{i}."))
    else:
        text = "[]" if isinstance(tree, (list, tuple)) else ("null" if tree is None else str(tree))
        out[prefix.rstrip(".")] = text[:MAX_PARAM_LENGTH]
    return out


def config_params(cfg: DictConfig) -> dict[str, str]:
    """The resolved config as flat params; of the study spec only its identity (the whole spec
    is logged as the artifact config/study_spec.yaml)."""
    tree = OmegaConf.to_container(cfg, resolve=True)
    data = tree.pop("data", {}) or {}
    tree["data"] = {k: data[k] for k in SPEC_PARAM_KEYS if k in data}
    return flatten(tree)


def git_state() -> dict[str, str]:
    """The commit of the code that runs (and whether it had uncommitted changes)."""
    here = Path(__file__).resolve().parent
    try:
        head = subprocess.run(["git", "rev-parse", "--verify", "--quiet", "HEAD"], cwd=here,
                              capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return {}
    commit = head.stdout.strip()
    if head.returncode != 0 or not re.fullmatch(r"[0-9a-f]{40,64}", commit):
        return {}
    return {"mlflow.source.git.commit": commit, "git_dirty": str(bool(dirty)).lower()}


def retry_lost_race(write, what: str):
    """`write()`, tried again when it lost a race on a unique key. MLflow's SQL store looks a row
    up, then inserts it when missing (a dataset of the experiment, an experiment tag): two
    processes doing so at once (parallel trials of a sweep) both miss it, and the second insert
    fails. Its transaction is rolled back whole, so the next try finds the first one's row."""
    from mlflow.exceptions import MlflowException

    for attempt in range(RACE_ATTEMPTS):
        try:
            return write()
        except MlflowException as e:
            if attempt == RACE_ATTEMPTS - 1 or not DUPLICATE_KEY.search(str(e)):
                raise
            log.debug("%s raced another process's write (%s); trying again", what, e)


def _timed(method):
    """Add the time a write takes to `TrackedRun.seconds` (the tracking overhead of a run)."""
    @functools.wraps(method)
    def timed(self, *args, **kwargs):
        start = time.perf_counter()
        try:
            return method(self, *args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - start
    return timed


class TrackedRun:
    """A started MLflow run and the few ways we write to it; `seconds` is the time spent writing.

    Artifacts in a local store are written atomically: each file is copied to a temporary name
    beside its target and renamed, so a crash never leaves half a file under a real name. Other
    stores (a tracking server, S3) get MLflow's own upload, whole objects there.
    """

    def __init__(self, client, run_id: str):
        self.client, self.run_id = client, run_id
        self.seconds = 0.0
        self._on_finish: list = []
        self._artifact_root: Path | None | bool = False   # False: not looked up yet

    def when_finished(self, action) -> None:
        """`action()` runs once the run's work has succeeded, before it is marked FINISHED (e.g.
        registering its adapter: a FAILED run leaves nothing registered)."""
        self._on_finish.append(action)

    def finish(self) -> None:
        for action in self._on_finish:
            action()
        self._on_finish.clear()

    def _local_artifact_root(self) -> Path | None:
        if self._artifact_root is False:
            uri = self.client.get_run(self.run_id).info.artifact_uri
            parsed = urllib.parse.urlparse(uri)
            local = parsed.scheme == "file" or (parsed.scheme == "" and uri.startswith("/"))
            self._artifact_root = Path(urllib.request.url2pathname(parsed.path)) if local else None
        return self._artifact_root

    def _put(self, path: Path, artifact_dir: str | None) -> None:
        root = self._local_artifact_root()
        if root is None:
            self.client.log_artifact(self.run_id, str(path), artifact_dir)
            return
        target = (root / artifact_dir if artifact_dir else root) / path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, partial = tempfile.mkstemp(dir=target.parent, prefix=f".{path.name}.", suffix=".partial")
        os.close(fd)
        try:
            shutil.copyfile(path, partial)
            os.replace(partial, target)
        except BaseException:
            Path(partial).unlink(missing_ok=True)
            raise

    @functools.cached_property
    def experiment_id(self) -> str:
        return self.client.get_run(self.run_id).info.experiment_id

    @_timed
    def log_inputs(self, inputs) -> None:
        """MLflow dataset inputs (`mlflow.entities.DatasetInput`) of the run; parallel trials log
        the same dataset into one experiment (`retry_lost_race`)."""
        inputs = list(inputs)
        retry_lost_race(lambda: self.client.log_inputs(self.run_id, datasets=inputs),
                        f"dataset inputs of run {self.run_id}")

    @_timed
    def log_params(self, params: Mapping[str, str]) -> None:
        from mlflow.entities import Param

        items = [Param(k, v) for k, v in params.items()]
        for i in range(0, len(items), BATCH):
            self.client.log_batch(self.run_id, params=items[i : i + BATCH])

    @_timed
    def log_metrics(self, metrics: Mapping[str, float | None], step: int = 0) -> None:
        """Defined values only: an undefined metric (None/NaN) is left out, never logged as 0."""
        import math
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step) for k, v in metrics.items()
                 if v is not None and not (isinstance(v, float) and math.isnan(v))]
        for i in range(0, len(items), 1000):
            self.client.log_batch(self.run_id, metrics=items[i : i + 1000])

    @_timed
    def set_tags(self, tags: Mapping[str, Any]) -> None:
        from mlflow.entities import RunTag

        items = [RunTag(k, str(v)[:MAX_PARAM_LENGTH]) for k, v in tags.items()]
        for i in range(0, len(items), BATCH):
            self.client.log_batch(self.run_id, tags=items[i : i + BATCH])

    @_timed
    def log_text(self, text: str, artifact_file: str) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / Path(artifact_file).name
            path.write_text(text, encoding="utf-8")
            self._put(path, _parent(artifact_file))

    def log_frame(self, frame, artifact_file: str) -> None:
        self.log_text(frame.to_csv(index=False), artifact_file)

    @_timed
    def log_file(self, path: str | Path, artifact_dir: str | None = None) -> None:
        self._put(Path(path), artifact_dir)

    @_timed
    def log_dir(self, path: str | Path, artifact_dir: str | None = None) -> None:
        """Every file under `path`, at the same relative place under `artifact_dir`."""
        folder = Path(path)
        for file in sorted(p for p in folder.rglob("*") if p.is_file()):
            sub = file.parent.relative_to(folder).as_posix()
            parts = [p for p in (artifact_dir, None if sub == "." else sub) if p]
            self._put(file, "/".join(parts) or None)


def _parent(artifact_file: str) -> str | None:
    parent = str(Path(artifact_file).parent)
    return None if parent in ("", ".") else parent


def process_alive(pid: Any) -> bool:
    """Whether a process of this host with that id still exists (unknown: assume it does)."""
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, TypeError, ValueError):
        return True
    return True


HEARTBEAT = "fidelity.heartbeat"   # tag: unix time of the run's last sign of life, refreshed by its process


def owner_tags() -> dict[str, str]:
    """Which process writes a run (and, under SLURM, which job), and when it last said it is alive."""
    tags = {"fidelity.host": socket.gethostname(), "fidelity.pid": str(os.getpid()), HEARTBEAT: str(int(time.time()))}
    env = os.environ
    if env.get("SLURM_ARRAY_JOB_ID") and env.get("SLURM_ARRAY_TASK_ID"):
        tags["slurm.job_id"] = f"{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"   # as squeue shows it
    elif env.get("SLURM_JOB_ID"):
        tags["slurm.job_id"] = env["SLURM_JOB_ID"]
    return tags


class Heartbeat:
    """A thread that refreshes a RUNNING run's heartbeat tag every `interval` seconds, so any
    host can tell a live run from one whose process or node died (settle_abandoned_runs)."""

    def __init__(self, client, run_id: str, interval: float):
        self.client, self.run_id, self.interval = client, run_id, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"heartbeat-{run_id[:8]}", daemon=True)

    def __enter__(self) -> "Heartbeat":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _beat(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.client.set_tag(self.run_id, HEARTBEAT, str(int(time.time())))
            except Exception as e:   # a store that is briefly away must not fail the run
                log.debug("heartbeat of run %s not written: %s", self.run_id, e)


def abandoned(run, stale_after_s: float, now: float | None = None) -> str | None:
    """Why a RUNNING run is dead, or None while it may be alive: its process on this host is
    gone, or (any host) its heartbeat is older than `stale_after_s`."""
    tags = run.data.tags
    host, pid = tags.get("fidelity.host"), tags.get("fidelity.pid")
    if host == socket.gethostname() and pid is not None and not process_alive(pid):
        return f"interrupted: process {pid} on {host} ended without finishing this run (killed or crashed)"
    beat = tags.get(HEARTBEAT)
    if beat is None or not beat.isdigit():
        return None   # a run from before heartbeats, of another host: cannot be judged from here
    silent = (time.time() if now is None else now) - int(beat)
    if silent > stale_after_s:
        when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(int(beat)))
        return (f"interrupted: no heartbeat from process {pid} on {host} since {when} ({silent:.0f} s > "
                f"tracking.stale_after_s={stale_after_s:g}): its process or node died")
    return None


def settle_abandoned_runs(client, experiment_id: str, stale_after_s: float = 300) -> list[str]:
    """Mark FAILED, with the reason, the RUNNING runs of this experiment that are dead: a SIGKILL,
    an out-of-memory kill, a cancelled job or a vanished node never gets to mark its run."""
    found = client.search_runs([experiment_id], max_results=1000, filter_string="attributes.status = 'RUNNING'")
    settled = []
    for run in found:
        reason = abandoned(run, stale_after_s)
        if reason is None:
            continue
        client.set_tag(run.info.run_id, "error", reason + "; marked by the next run's start")
        client.set_terminated(run.info.run_id, status="FAILED")
        settled.append(run.info.run_id)
        log.warning("run %s was left RUNNING by a process that is gone: marked FAILED (%s)", run.info.run_id, reason)
    return settled


@contextmanager
def start_run(tracking: TrackingSettings, paths: PathSettings, *, run_name: str,
              tags: Mapping[str, Any]) -> Iterator[TrackedRun]:
    """Start a run in the configured experiment; mark it FINISHED, or FAILED with the reason as a tag.

    With `tracking.run_id` set (a sweep trial: the sweeper created the run as a child of the
    sweep's parent run), that run is used instead of a new one.
    """
    uri = tracking_uri(tracking, paths)
    client = open_client(uri)
    experiment_id = get_or_create_experiment(client, tracking.experiment, tracking.artifact_root, uri)
    settle_abandoned_runs(client, experiment_id, tracking.stale_after_s)
    from fidelity_exp.tracking.notebook import source_tags

    all_tags = {"mlflow.runName": run_name, **source_tags(), **git_state(), **owner_tags(),
                **{k: v for k, v in tags.items() if v is not None}}
    all_tags = {k: str(v)[:MAX_PARAM_LENGTH] for k, v in all_tags.items()}
    given = tracking.run_id
    if given:
        run = client.get_run(given)
        if run.info.status in ("FINISHED", "FAILED", "KILLED"):   # e.g. a trial's job that started after its
            raise UserError(f"tracking.run_id={given}: that run already ended ({run.info.status}: "   # sweep gave it up
                            f"{run.data.tags.get('error', 'no reason given')}); not running it again")
        tracked = TrackedRun(client, run.info.run_id)
        # owner tags first: a run is never RUNNING without saying which process runs it
        tracked.set_tags({k: v for k, v in all_tags.items() if k != "mlflow.runName" or not run.info.run_name})
        client.update_run(run.info.run_id, status="RUNNING", name=run.info.run_name or run_name)
    else:
        run = client.create_run(experiment_id, run_name=run_name, tags=all_tags)
        tracked = TrackedRun(client, run.info.run_id)
    try:
        with Heartbeat(client, run.info.run_id, tracking.heartbeat_s):
            yield tracked
            tracked.finish()
    except BaseException as e:
        reason = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
        try:
            client.set_tag(run.info.run_id, "error", reason[:MAX_PARAM_LENGTH])
        finally:
            client.set_terminated(run.info.run_id, status="KILLED" if isinstance(e, KeyboardInterrupt) else "FAILED")
        raise
    client.set_terminated(run.info.run_id, status="FINISHED")
