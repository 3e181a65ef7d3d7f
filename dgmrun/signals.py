"""SIGTERM (schedulers, ``kill``) and Ctrl-C: the run stops at a clean point, says so in one line and
exits 128 + the signal number (143, 130).

``install()`` (the command line) makes either signal raise :class:`Stopped`. While the training loop runs,
the train task defers it instead (``defer_to``): Lightning finishes the step in progress, a checkpoint
of that exact step is saved, and only then does the run end. Once stopping, further signals are ignored,
so that a second Ctrl-C cannot cut a checkpoint or the loggers' closing short.

In a sweep (``-m``: the jobs run one after another in this process) a signal ends the sweep: the job
in progress stops as above, the jobs after it do not start.

Torch-free: the command line installs the handlers before anything heavy is imported.
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from types import FrameType

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Stopped(BaseException):
    """A signal ended the run. A BaseException, so no ``except Exception`` on the way swallows it."""

    def __init__(self, signum: int, detail: str = ""):
        super().__init__(f"stopped by {signal.Signals(signum).name}{detail}")
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


_received: int | None = None
_deferred: Callable[[int], None] | None = None


def _handle(signum: int, frame: FrameType | None) -> None:
    global _received
    if _received is not None:
        return  # already stopping
    _received = signum
    if _deferred is None:
        raise Stopped(signum)
    _deferred(signum)


def install() -> None:
    """SIGTERM and SIGINT raise :class:`Stopped` from now on (also during start-up)."""
    global _received, _deferred
    _received, _deferred = None, None
    for signum in SIGNALS:
        signal.signal(signum, _handle)


def received() -> int | None:
    """The signal that asked the run to stop, if one did."""
    return _received


def defer_to(request_stop: Callable[[int], None] | None) -> None:
    """While set, a signal calls ``request_stop(signum)`` instead of raising; None: raise again."""
    global _deferred
    _deferred = request_stop
