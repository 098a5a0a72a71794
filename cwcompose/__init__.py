"""cwcompose: compose piano music with a Compound Word Transformer."""

__version__ = "0.1.0"
