"""Funnel metrics, forecast models, simulation and backtests: pure maths over arrays."""
