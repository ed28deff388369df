"""Benchmarks: ``python benchmarks/bench.py`` (see its docstring)."""
