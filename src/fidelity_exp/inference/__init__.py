"""Inference from humans plus synthetic twins: prediction-powered (rectified) regression estimates."""

from fidelity_exp.inference.prediction_powered import Estimate, classical, effective_n, ppi

__all__ = ["Estimate", "classical", "effective_n", "ppi"]
