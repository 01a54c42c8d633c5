"""Fidelity metrics (../shared/docs/METRICS.md): one module per family, registered by name.

Importing this package registers every family, in METRICS.md's section order (the order of the
report's rows); `suite.evaluate_arm` computes them.
"""

# isort: off
from fidelity_exp.metrics import divergence, heterogeneity, subgroup, coherence, regression, individual  # noqa: F401
# isort: on
from fidelity_exp.metrics import score  # noqa: F401  (fidelity_score: derived from the families' keys)
from fidelity_exp.metrics import position  # noqa: F401  (section 12: from an LLM arm's probabilities, not a family)
from fidelity_exp.metrics.registry import FAMILIES, higher_is_better, is_aggregate, key_info, prefixed
from fidelity_exp.metrics.suite import ArmResult, Options, evaluate_arm, human_reference

__all__ = ["FAMILIES", "ArmResult", "Options", "evaluate_arm", "higher_is_better", "human_reference",
           "is_aggregate", "key_info", "prefixed"]
