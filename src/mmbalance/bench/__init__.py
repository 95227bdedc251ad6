"""Benchmarks: the synthetic competition sweep (paper Figure 1), tuning with equal budgets,
reports and plots. Import work stays in the submodules."""
