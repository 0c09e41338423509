"""Stopping a long-running command on SIGINT/SIGTERM without taking a lock inside the signal handler.

    stop = stop_on_signals()          # a threading.Event, set soon after SIGINT or SIGTERM arrives
    while not stop.is_set(): ...

A handler that calls `stop.set()` itself can deadlock: Python runs handlers in the main thread between bytecodes, so
a second signal landing while the first handler is inside `Event.set()` (or one landing while the main thread is
inside `stop.wait()`) waits for the Event's lock, which that same thread holds. (A `q2rl actor` hung this way after
two SIGTERMs and kept reconnecting to a learner that was gone.) The handler here only puts the signal on a
SimpleQueue, whose put is documented as safe in signal handlers; a daemon thread sets the Event.
"""

from __future__ import annotations

import queue
import signal
import threading


def stop_on_signals(signals: tuple[int, ...] = (signal.SIGINT, signal.SIGTERM)) -> threading.Event:
    """An Event that is set when one of `signals` arrives (installs the handlers; call from the main thread)."""
    stop = threading.Event()
    arrived: queue.SimpleQueue = queue.SimpleQueue()

    def relay() -> None:
        arrived.get()
        stop.set()

    threading.Thread(target=relay, name="q2rl-stop-signal", daemon=True).start()
    for sig in signals:
        signal.signal(sig, lambda signum, frame: arrived.put(signum))
    return stop
