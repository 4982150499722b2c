"""The ablations experiment: ``python -m experiments.ablations.run`` (see this folder's README.md)."""
