"""Ctrl-C in the command line: one line and exit 130, whatever was running when it came."""

from __future__ import annotations

import sys


class CtrlC:
    """Notes whether SIGINT arrived while the CLI ran (it still raises KeyboardInterrupt), so
    that an error which only followed a Ctrl-C ends as the interruption it is: third-party code
    may swallow the KeyboardInterrupt (a module half imported, then an ImportError). Only where
    Python's own handler is in place: an ignored SIGINT (``nohup ... &``) stays ignored."""

    seen = False
    #: the CtrlC watching SIGINT now, if any (``is_ctrl_c`` asks it)
    watching: CtrlC | None = None

    def __enter__(self):
        import signal
        import threading

        self.before = None
        if threading.current_thread() is threading.main_thread() and \
                signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            self.before = signal.signal(signal.SIGINT, self._handler)
            CtrlC.watching = self
        return self

    def _handler(self, signum, frame):
        import signal

        self.seen = True
        signal.default_int_handler(signum, frame)

    def __exit__(self, *exc):
        import signal

        if self.before is not None:
            signal.signal(signal.SIGINT, self.before)
            CtrlC.watching = None
        return False


def is_ctrl_c(error: BaseException) -> bool:
    """Whether ``error`` is the user's Ctrl-C, not code that raised KeyboardInterrupt itself (a
    user's variant can): with the CLI watching SIGINT, whether one arrived; where SIGINT is
    ignored (a pool worker, ``nohup``) it cannot be one; otherwise (a library caller) it is taken
    for one."""
    import signal

    if not isinstance(error, KeyboardInterrupt):
        return False
    if CtrlC.watching is not None:
        return CtrlC.watching.seen
    return signal.getsignal(signal.SIGINT) is not signal.SIG_IGN


def interrupted() -> int:
    """Ctrl-C: what finished is recorded, a rerun resumes."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C while leaving: no traceback
    # CPython marks a KeyboardInterrupt that ends an exec() of source text as unhandled even
    # when it is caught further up (a dataclass's generated __init__ while torch or scipy
    # imports), and `python -m` then leaves by SIGINT (-2) instead of 130. The next exec() of
    # text clears that mark (Python/pythonrun.c, run_eval_code_obj).
    exec("")
    print("vae-bench: interrupted; finished runs are kept and a rerun resumes (from the "
          "last mid-run checkpoint where train.checkpoint_every is set)", file=sys.stderr)
    return 130
