"""Benchmark scripts (``python -m benchmarks.NAME`` or ``python benchmarks/NAME.py``).

A package so that one benchmark can import another's pieces: Opacus installs a top-level
``benchmarks`` package of its own, which would otherwise shadow this folder.
"""
