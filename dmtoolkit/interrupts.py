"""Ctrl-C that cannot be lost in a long loop (training models, scoring networks).

Python raises `KeyboardInterrupt` wherever the main thread happens to be when the signal is handled. When that
is inside a finalizer (an object's `__del__`, a weakref callback, a Cython `__dealloc__`: h5py and
multiprocessing objects have them, and the garbage collector runs them at any allocation), Python prints
"Exception ignored in ..." and the interrupt is gone: `dmtoolkit train` then went on to its last model and
exited 0. `CtrlCLatch` records the press as well; the loop calls `check()` at each step, which raises it again.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType, TracebackType

__all__ = ["CtrlCLatch"]


class CtrlCLatch:
    """While entered (in the main thread, where Ctrl-C still raises `KeyboardInterrupt`), a Ctrl-C is remembered
    and `check()` raises it at the loop's next step, even if the first raise was swallowed. Elsewhere (another
    thread, SIGINT ignored or handled by the caller) it does nothing, and `check()` never raises."""

    def __init__(self) -> None:
        self.pressed = False
        self._previous: object = None
        self._installed = False

    def __enter__(self) -> CtrlCLatch:
        if threading.current_thread() is threading.main_thread() \
                and signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            self._previous = signal.signal(signal.SIGINT, self._handle)
            self._installed = True
        return self

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.pressed = True
        raise KeyboardInterrupt

    def check(self) -> None:
        """Raise `KeyboardInterrupt` if Ctrl-C was pressed since entering."""
        if self.pressed:
            raise KeyboardInterrupt

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        if self._installed:
            signal.signal(signal.SIGINT, self._previous)
            self._installed = False
