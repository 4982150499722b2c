"""Digits among clutter: ``python -m experiments.cluttered.run`` (see README.md)."""
