"""Benchmark workloads for finreport-testdb (GitHub issue 5); run through `scripts/bench.py`.

Every figure the report states is a ratio (or a difference) of numbers measured in the same run,
side by side, because the machines are shared and absolute times drift by up to 10x.
"""
