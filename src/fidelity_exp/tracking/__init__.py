"""Recording runs in MLflow."""

from fidelity_exp.tracking.mlflow_run import (TrackedRun, TrackingSettings, check_store, config_params, start_run,
                                             tracking_uri)

__all__ = ["TrackedRun", "TrackingSettings", "check_store", "config_params", "start_run", "tracking_uri"]
