"""The desk-scale experiments: ``harness`` and one folder per experiment (run it as ``python -m experiments.NAME.run``)."""
