"""Adapters that keep what the pipeline knows: ClickHouse tables and Prometheus metrics."""
