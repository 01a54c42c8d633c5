"""Fidelity metrics (../shared/docs/METRICS.md): one module per family, registered by name.

Importing this package registers every family; `suite.evaluate_arm` computes them.
"""

from fidelity_exp.metrics import coherence, divergence, heterogeneity, individual, regression, subgroup  # noqa: F401
from fidelity_exp.metrics.registry import FAMILIES, higher_is_better, is_aggregate, key_info
from fidelity_exp.metrics.suite import ArmResult, Options, evaluate_arm, human_reference, prefixed

__all__ = ["FAMILIES", "ArmResult", "Options", "evaluate_arm", "higher_is_better", "human_reference",
           "is_aggregate", "key_info", "prefixed"]
