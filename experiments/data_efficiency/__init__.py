"""The data-efficiency experiment: ``python -m experiments.data_efficiency.run`` (see this folder's README.md)."""
