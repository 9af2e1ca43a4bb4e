"""Benchmarks for Shopfloor (scripts, not tests). Run them from the repository root with
``.venv/bin/python -m bench.<name>``; see bench/README.md."""
