"""Benchmarks: single-user, zero-shot, personalized, few-shot and sweeps, with one runner."""
