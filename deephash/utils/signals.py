"""SIGTERM and SIGINT as interruptions of a command, whatever stage it is in.

A scheduler sends SIGTERM when it preempts a job or its time limit is near; Ctrl-C sends SIGINT. Either one
stops the command with :class:`Interrupted`, which the entry points record (``"status": "interrupted"``) and turn
into the shell's exit status for the signal, 128 + its number: 143 for SIGTERM, 130 for SIGINT. A scheduler
that sees a non-zero status knows the job did not finish and can requeue it.

While a model trains, stopping at once would leave no consistent state to resume from: the training callback
(:class:`deephash.models.resume.ResumeState`) calls :func:`defer_signals`, so the first signal only asks the
fit to stop after the current batch, where a checkpoint is written; a second one stops at once.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.context
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Interrupted(BaseException):
    """The command was stopped by ``signum``. A BaseException, like KeyboardInterrupt: no ``except Exception``
    on the way up may take it for an ordinary failure."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"interrupted by {signal.Signals(signum).name}")
        self.signum = int(signum)

    @property
    def status(self) -> int:
        return 128 + self.signum


_received: list[int] = []  # the signals this command received, in order
# while a fit runs: how to ask it to stop, and how many signals had come before
_deferred: list[tuple[Callable[[int], None], int]] = []


def received() -> int | None:
    """The last SIGTERM or SIGINT this process received while :func:`handle_signals` was active, or None."""
    return _received[-1] if _received else None


def _handler(signum: int, frame: object) -> None:
    _received.append(signum)
    if _deferred and len(_received) == _deferred[-1][1] + 1:
        _deferred[-1][0](signum)  # the fit stops after its current batch and writes a checkpoint there
        return
    raise Interrupted(signum)


@contextmanager
def handle_signals() -> Iterator[None]:
    """Within the block SIGTERM and SIGINT raise :class:`Interrupted` (or, during a fit, stop it gracefully).
    Outside the main thread, or for a signal the process ignores (a job started in the background ignores
    SIGINT), nothing is installed."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {}
    for signum in SIGNALS:
        if signal.getsignal(signum) is not signal.SIG_IGN:
            previous[signum] = signal.signal(signum, _handler)
    _received.clear()
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def defer_signals(stop: Callable[[int], None]) -> None:
    """From now on the first SIGTERM or SIGINT calls ``stop(signum)`` instead of raising; a second one raises."""
    _deferred.append((stop, len(_received)))


def resume_signals() -> int | None:
    """End the last :func:`defer_signals`; returns the signal deferred meanwhile, if one came."""
    if not _deferred:
        return None
    _, mark = _deferred.pop()
    return _received[-1] if len(_received) > mark else None


def interruption_status(err: BaseException) -> int | None:
    """The exit status of a command that ended with ``err`` if a signal stopped it (143 for SIGTERM, 130 for
    SIGINT), else None.

    Besides :class:`Interrupted`: a KeyboardInterrupt (Ctrl-C where no handler of ours ran), Lightning's
    ``SIGTERMException`` (a SystemExit whose code is None, raised at the end of a batch after a signal), and the
    ``SystemExit(1)`` Lightning raises after its graceful shutdown on a KeyboardInterrupt (once a signal came)."""
    if isinstance(err, Interrupted):
        return err.status
    if isinstance(err, KeyboardInterrupt):
        return 128 + signal.SIGINT
    if not isinstance(err, SystemExit):
        return None
    signum = received()
    if type(err).__name__ == "SIGTERMException":
        return 128 + (signal.SIGTERM if signum is None else signum)
    return 128 + signum if err.code == 1 and signum is not None else None


# ---- DataLoader workers: deaf to a scheduler's SIGTERM, not to their parent's ----------------------------------


def quiet_worker(worker_id: int) -> None:
    """A DataLoader worker leaves SIGINT and SIGTERM from outside to the main process: a scheduler's SIGTERM
    reaches every process of the job, and a worker killed by it would fail the batch the main process is
    finishing before it stops (``deephash.utils.signals``).

    A SIGTERM from the worker's own parent still ends it: that is how the DataLoader stops a worker that does
    not leave in time, and how ``multiprocessing`` ends the workers a process still holds when it exits (its exit
    waits for them; ignored, the SIGTERM would leave it waiting forever). Python's handlers do not say who sent
    a signal, so a thread takes SIGTERM with ``sigwaitinfo``, which does. That needs SIGTERM blocked in every
    thread of the worker, those started before this function too: the worker is forked with it blocked
    (:func:`worker_context`). Elsewhere (another start method, macOS, Windows) SIGTERM keeps its default action."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if not (_SIGWAIT and signal.SIGTERM in signal.pthread_sigmask(signal.SIG_BLOCK, set())):
        return  # not forked by worker_context(): SIGTERM keeps its default action
    parent = os.getppid()
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # not the handler the worker inherited from its parent
    threading.Thread(
        target=_end_on_parents_sigterm, args=(parent,), name="deephash-sigterm", daemon=True
    ).start()


def _end_on_parents_sigterm(parent: int) -> None:
    while signal.sigwaitinfo({signal.SIGTERM}).si_pid != parent:
        pass  # from outside: ignored, the main process stops the job
    # the parent's: die of it as an unhandled SIGTERM would (pending until this thread unblocks it)
    os.kill(os.getpid(), signal.SIGTERM)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
    os._exit(128 + signal.SIGTERM)  # not reached


_SIGWAIT = hasattr(signal, "sigwaitinfo") and hasattr(signal, "pthread_sigmask")


class _ForkWithSigtermBlocked(multiprocessing.context.ForkProcess):
    """A forked process whose threads all start with SIGTERM blocked (the mask of the thread that forks it is
    the child's); the parent's own mask is restored at once, a SIGTERM that came meanwhile delivered then."""

    def start(self) -> None:
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
        try:
            super().start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)


class _WorkerContext(multiprocessing.context.ForkContext):
    Process = _ForkWithSigtermBlocked  # type: ignore[assignment]


def worker_context() -> multiprocessing.context.BaseContext | None:
    """The DataLoader's ``multiprocessing_context``: forked workers that :func:`quiet_worker` can make deaf to
    SIGTERM from outside; None (torch's default) where workers are not forked or ``sigwaitinfo`` is missing."""
    if sys.platform != "linux" or multiprocessing.get_start_method(allow_none=True) not in (None, "fork"):
        return None
    return _WorkerContext()
