"""The transfer experiment: ``python -m experiments.transfer.run`` (see this folder's README.md)."""
