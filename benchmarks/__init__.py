"""Benchmarks of airflow-provider-mlpipe against its anchors: `make bench` runs them all (README)."""
