"""PySyft's printed and displayed noise, swallowed while the scientist's side talks to a datasite."""

from __future__ import annotations

import contextlib
import io
import logging
import sys
import threading
from collections.abc import Iterator

_quiet_lock = threading.Lock()
_quiet_users = 0
_real_stdout = sys.stdout
_real_display = None  # in IPython, (the shell, its display publisher) while quiet() holds them


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Swallow PySyft's banners (SyftSuccess, 'Logged into ...') unless verbose: what it prints,
    and in IPython what it shows with ``display`` (``sy.syft_function`` shows a SyftSuccess
    suggesting ``syft.Project``), which goes to the shell's display publisher, not to stdout.

    Sites are called from several threads at once, and ``contextlib.redirect_stdout`` (like
    IPython's ``capture_output``) is not thread-safe (overlapping exits leave stdout pointing
    at a buffer, losing every later line): the first user swaps both out, the last one puts
    them back.
    """
    global _quiet_users, _real_stdout, _real_display
    if logging.getLogger("fl_syft").isEnabledFor(logging.DEBUG):
        yield
        return
    from IPython.core.displaypub import CapturingDisplayPublisher
    from IPython.core.interactiveshell import InteractiveShell

    with _quiet_lock:
        if _quiet_users == 0:
            _real_stdout, sys.stdout = sys.stdout, io.StringIO()
            if InteractiveShell.initialized():
                shell = InteractiveShell.instance()
                _real_display, shell.display_pub = (shell, shell.display_pub), CapturingDisplayPublisher()
        _quiet_users += 1
    try:
        yield
    finally:
        with _quiet_lock:
            _quiet_users -= 1
            if _quiet_users == 0:
                sys.stdout = _real_stdout
                if _real_display is not None:
                    shell, publisher = _real_display
                    shell.display_pub, _real_display = publisher, None
