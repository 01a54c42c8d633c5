"""hydra-submitit-launcher's SLURM launcher with the two changes a sweep needs
(conf/hydra/launcher/slurm.yaml selects it):

1. A job that ends without a result (scancel, a SIGKILL, an out-of-memory kill, a failed node:
   SLURM's accounting says how it ended) is returned as *that* trial's error, so the sweeper
   records it and retries it; upstream raises on the first such job and loses the batch.
2. A sweep that is stopped while it waits (Ctrl-C, or SIGTERM from `scancel` of the sweep's own
   job) cancels the jobs it submitted, so no trial keeps running unowned.

Everything else is upstream's (hydra-submitit-launcher 1.2.0, `BaseSubmititLauncher.launch`).
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any, List, Sequence

from hydra.core.singleton import Singleton
from hydra.core.utils import filter_overrides
from hydra_plugins.hydra_submitit_launcher import submitit_launcher
from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
from omegaconf import OmegaConf

log = logging.getLogger(__name__)
POLL_S = 15   # seconds between sacct calls while a sweep waits for its jobs


class SlurmLauncher(submitit_launcher.SlurmLauncher):
    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[Any]:
        import submitit

        assert self.config is not None and len(job_overrides) > 0
        params = self.params
        init_keys = {"max_num_timeout", "submitit_folder"}
        executor = submitit.AutoExecutor(cluster=self._EXECUTOR, folder=params["submitit_folder"],
                                         **{f"{self._EXECUTOR}_max_num_timeout": params["max_num_timeout"]})
        base = set(OmegaConf.structured(BaseQueueConf).keys())
        executor.update_parameters(**{k if k in base else f"{self._EXECUTOR}_{k}": v
                                      for k, v in params.items() if k not in init_keys})
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        if "mode" in self.config.hydra.sweep:
            os.chmod(sweep_dir, mode=int(str(self.config.hydra.sweep.mode), 8))
        job_params: List[Any] = []
        for idx, overrides in enumerate(job_overrides, start=initial_job_idx):
            log.info("\t#%d : %s", idx, " ".join(filter_overrides(overrides)))
            job_params.append((list(overrides), "hydra.sweep.dir", idx, f"job_id_for_{idx}", Singleton.get_state()))
        jobs = executor.map_array(self, *zip(*job_params))
        log.info("SLURM job array %s: %d tasks (%s)", jobs[0].job_id.split("_")[0], len(jobs),
                 ", ".join(j.job_id for j in jobs))
        try:
            return [self._result(job) for job in jobs]
        except BaseException:   # Ctrl-C or SIGTERM while waiting: no job may run on unowned
            for job in jobs:
                if not job.done():
                    job.cancel(check=False)
            log.warning("cancelled SLURM jobs %s", ", ".join(j.job_id for j in jobs))
            raise

    @staticmethod
    def _result(job) -> Any:
        from fidelity_exp.sweep.sweeper import JobEnded

        # submitit asks sacct at most every 600 s for a long job (and only sacct knows a job that
        # died without a result): ask every POLL_S instead, one sacct call per sweep process
        checked = time.monotonic()
        while not job.done():
            if time.monotonic() - checked > POLL_S:
                if job.done(force_check=True):
                    break
                checked = time.monotonic()
            time.sleep(1)
        try:
            return job.results()[0]
        except Exception as e:   # submitit.core.utils.UncompletedJobError and kin: the job died
            state = job.watcher.get_state(job.job_id, mode="force")
            return JobEnded(f"SLURM job {job.job_id} ended without a result (state {state}): "
                            f"{str(e).splitlines()[0] if str(e) else type(e).__name__}")
