"""speechwire: connect any speech foundation model to any causal LLM through a trainable adapter."""

__version__ = "0.1.0"
