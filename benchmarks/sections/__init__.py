"""The benchmark's sections, one module per kind; ``benchmarks/run.py`` runs them."""
