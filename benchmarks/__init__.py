"""Benchmarks of pepperpy-pg-memory against the seed's table and the stores users pick instead.

Run ``python -m benchmarks --help``.
"""
