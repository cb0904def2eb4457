"""Evaluation: inference (scales, flip, CRF), metrics, evaluate, rho sweep, test export, analyses."""
