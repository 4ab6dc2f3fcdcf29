"""Benchmarks and the reliability suite (scripts; `python bench/NAME.py`)."""
