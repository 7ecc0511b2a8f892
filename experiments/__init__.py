"""Command-line entry points: train, evaluate, sample, compare, toy_tables."""
