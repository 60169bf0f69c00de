"""Benchmarks as specs (`python -m bench` at the checkout's root): each figure against a baseline
measured in the same run and a target that renders its own text. A repository tool, never
installed."""
