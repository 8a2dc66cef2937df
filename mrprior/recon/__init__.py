"""Reconstruction algorithms: baselines and prior-regularized solvers."""
