"""Sweeps: Optuna studies over any config value, run through Hydra multirun (see sweeper.py)."""
