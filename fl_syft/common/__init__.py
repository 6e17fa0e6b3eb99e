"""What both sides share: data sources, partitions, model shapes, errors, small file helpers.

Imports nothing from ``fl_syft.owner``, ``fl_syft.scientist`` or ``fl_syft.vetted``.
"""
