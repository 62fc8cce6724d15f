"""tunesmith: turn a pre-trained LLM into a specialist on your own data, on your own machine."""

__version__ = "0.1.0"
