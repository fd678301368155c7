"""Benchmarks that print ratios against peers measured in the same run.

Run one with ``.venv/bin/python -m bench.<name>`` as root; each writes its own
section of docs/benchmarks.md.
"""
