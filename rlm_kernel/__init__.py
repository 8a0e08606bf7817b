"""Recursive Language Models that drive a real Jupyter kernel; every run is a notebook."""

__version__ = "0.1.0"
