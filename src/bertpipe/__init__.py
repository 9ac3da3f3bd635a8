"""bertpipe: d2l.ai's BERT chapters as a config-driven DVC pipeline."""

__version__ = "0.1.0"
