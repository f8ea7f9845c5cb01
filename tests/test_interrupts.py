"""interrupts_held: Ctrl-C and SIGTERM recorded inside the block, handlers restored after it."""

import os
import signal
import threading

import pytest

from mlanet.interrupts import interrupts_held


@pytest.fixture(autouse=True)
def _python_sigint(python_sigint_handler):
    """Each test starts from Python's own SIGINT handler (see conftest.python_sigint_handler)."""


def _send(signum):
    os.kill(os.getpid(), signum)


def test_sigint_inside_the_block_is_held_and_recorded(capsys):
    finished = False
    with interrupts_held("finishing, please wait") as held:
        _send(signal.SIGINT)
        _send(signal.SIGINT)  # a second Ctrl-C is held too; the notice is printed once
        finished = True
    assert finished and held.received and held.signals == [signal.SIGINT, signal.SIGINT]
    assert capsys.readouterr().err.count("finishing, please wait") == 1
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    with pytest.raises(KeyboardInterrupt):  # outside the block Ctrl-C stops again
        _send(signal.SIGINT)


def test_sigterm_is_held_and_its_default_restored():
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    with interrupts_held() as held:
        _send(signal.SIGTERM)
    assert held.signals == [signal.SIGTERM]
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_nothing_received_and_handlers_restored_after_an_error():
    with pytest.raises(ValueError):
        with interrupts_held() as held:
            raise ValueError("boom")
    assert not held.received
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_an_ignored_sigint_stays_ignored():
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with interrupts_held() as held:
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
            _send(signal.SIGINT)
        assert not held.received and signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)


def test_outside_the_main_thread_the_block_runs_unchanged():
    seen = {}

    def worker():
        with interrupts_held() as held:
            seen["handler"] = signal.getsignal(signal.SIGINT)
        seen["received"] = held.received

    t = threading.Thread(target=worker)
    t.start()
    t.join()
    assert seen == {"handler": signal.default_int_handler, "received": False}
