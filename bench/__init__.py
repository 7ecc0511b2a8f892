"""Benchmarks: scripts that print one JSON record each (see bench/README.md)."""
