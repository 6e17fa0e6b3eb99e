"""fl-syft: federated logistic regression on MNIST across PySyft 0.9.5 datasites."""

__version__ = "0.1.0"
