"""fidelity_exp: can an LLM fine-tuned on a small human pilot stand in for more respondents?

Data flows one way: study spec -> pilot/evaluation split -> arms -> synthetic frames ->
metrics -> tracking and report. `pipeline.run(cfg)` is the recipe that strings them together.
"""

__version__ = "0.1.0"
