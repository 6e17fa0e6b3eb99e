"""The data owner's side: datasite processes, the auto-approver, the launcher and ``serve``.

Runs on the data owner's machine. Imports ``fl_syft.common`` and ``fl_syft.vetted`` (to
recognise the vetted functions), never ``fl_syft.scientist``.
"""
