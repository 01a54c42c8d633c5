"""The language model side: locating and loading models, prompts, fine-tuning, scoring."""
