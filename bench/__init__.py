"""Benchmarks (`make bench` = `python -m bench`): every `bench/*.py` module with a `main()`."""
