"""Benchmarks: every figure printed next to a reference measured in the same run (``python -m bench``)."""
