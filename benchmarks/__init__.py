"""Benchmarks, outside the installed package; from the repository root: `python -m benchmarks codec|formats [--json PATH]`.

Speeds are always printed next to a baseline measured in the same run, because the
machines these run on are shared and absolute numbers drift.
"""
