"""SIGINT/SIGTERM stop a command without a lock in the handler (q2rl.signals)."""

import os
import signal
import threading

import pytest

from q2rl.signals import stop_on_signals


@pytest.fixture
def restored_handlers():
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


def test_a_signal_inside_a_held_event_lock_does_not_deadlock(restored_handlers):
    """The case that hung a `q2rl actor`: a second SIGTERM landed while the first handler was inside stop.set(), so
    the handler waited for the Event's lock its own thread held. Here the lock is held while the handler runs."""
    stop = stop_on_signals()
    handler = signal.getsignal(signal.SIGTERM)
    with stop._cond:  # as inside Event.set()/Event.wait() when the signal lands
        handler(signal.SIGTERM, None)  # returns at once (an Event.set() here would wait forever)
        handler(signal.SIGTERM, None)
        assert not stop.is_set()
    assert stop.wait(5)


def test_real_signals_set_the_event(restored_handlers):
    stop = stop_on_signals()
    for _ in range(3):  # several in a row, as a scheduler and the parent-death signal may send them
        os.kill(os.getpid(), signal.SIGTERM)
    assert stop.wait(5)
    assert threading.main_thread().is_alive()
