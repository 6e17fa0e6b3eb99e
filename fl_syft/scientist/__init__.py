"""The data scientist's side: connect to datasites, run an algorithm's rounds, aggregate, report.

Runs on the scientist's machine. Imports ``fl_syft.common`` and ``fl_syft.vetted`` (the
functions it submits), never ``fl_syft.owner``.
"""
