"""Benchmarks: `python -m xorsparse.bench codec|formats [--json PATH]`.

Speeds are always printed next to a baseline measured in the same run, because the
machines these run on are shared and absolute numbers drift.
"""
