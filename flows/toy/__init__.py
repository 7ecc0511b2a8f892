"""Discrete toy tables: exact-likelihood sanity checks for flows.

A small contingency table (``tables``) is a distribution known exactly. Counting models
(``exact``) give its joint, conditionals and Bayes posterior; flows (``models``) are trained
on its uniformly dequantized samples (``fit``) and their own cell masses are integrated by
quadrature (``quadrature``), so the two can be compared cell by cell (``experiment``, run by
``python -m experiments.toy_tables``).
"""
