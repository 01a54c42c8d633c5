"""fidelity_exp: can an LLM fine-tuned on a small human pilot stand in for more respondents?

Data flows one way: study spec -> pilot/evaluation split -> arms -> synthetic frames ->
metrics -> tracking and report. `pipeline.run(cfg)` is the recipe that strings them together;
the public Python API (`fidelity_exp.api`, README "Python API") is re-exported here:

    import fidelity_exp as fx
    scores = fx.score(fx.load_study("my_spec.yaml"), "twins.csv")
"""

__version__ = "0.1.0"
__all__ = ["Options", "Scores", "load_spec", "load_study", "score"]


def __getattr__(name: str):
    # Lazily: `python -m fidelity_exp --help` and Hydra's plugin scan need none of the metric stack.
    if name in ("Scores", "load_spec", "load_study", "score"):
        from fidelity_exp import api

        return getattr(api, name)
    if name == "Options":
        from fidelity_exp.metrics import Options

        return Options
    raise AttributeError(f"module 'fidelity_exp' has no attribute {name!r}")
