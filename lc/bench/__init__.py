"""Benchmarks: timing utilities, the region-conv op, whole models and stages, rho, Table 6."""
