import sys
import threading

from fl_syft.scientist.connect import quiet


def test_overlapping_quiet_calls_from_threads_restore_stdout():
    """Sites are called from threads: A enters, B enters, A leaves, B leaves. Afterwards
    stdout must be the real one again (redirect_stdout left it on B's buffer)."""
    real = sys.stdout
    a_in, b_in, a_out = threading.Event(), threading.Event(), threading.Event()

    def a():
        with quiet():
            a_in.set()
            b_in.wait()
        a_out.set()

    def b():
        a_in.wait()
        with quiet():
            b_in.set()
            a_out.wait()
            print("PySyft banner")

    threads = [threading.Thread(target=f) for f in (a, b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sys.stdout is real
