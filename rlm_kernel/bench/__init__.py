"""Benchmarks: the paper's task shapes with their baselines, and the overhead suite."""
