"""The batched log handler: INFO lines leave the event loop's path, nothing is lost or written twice."""

from __future__ import annotations

import io
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

from modelgate_core.logging import BatchedStreamHandler


def make_logger(handler: logging.Handler, name: str) -> logging.Logger:
    logger = logging.getLogger(name)
    logger.handlers = [handler]
    logger.propagate = False
    logger.setLevel(logging.INFO)
    return logger


def wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return False


def test_info_lines_wait_for_the_flusher_then_arrive_in_order() -> None:
    stream = io.StringIO()
    handler = BatchedStreamHandler(stream, flush_seconds=0.05)
    logger = make_logger(handler, "test.batched.info")
    handler.acquire()  # the flusher cannot write while the test holds the lock
    try:
        logger.info("one")
        logger.info("two")
        assert stream.getvalue() == ""
    finally:
        handler.release()
    assert wait_for(lambda: stream.getvalue() == "one\ntwo\n")


def test_a_warning_is_written_at_once_after_the_lines_before_it() -> None:
    stream = io.StringIO()
    handler = BatchedStreamHandler(stream, flush_seconds=60)
    logger = make_logger(handler, "test.batched.warning")
    logger.info("before")
    assert stream.getvalue() == ""
    logger.warning("alarm")
    assert stream.getvalue() == "before\nalarm\n"


def test_zero_seconds_writes_every_line_at_once() -> None:
    stream = io.StringIO()
    logger = make_logger(BatchedStreamHandler(stream, flush_seconds=0), "test.batched.zero")
    logger.info("now")
    assert stream.getvalue() == "now\n"


def test_pending_lines_are_bounded() -> None:
    stream = io.StringIO()
    logger = make_logger(BatchedStreamHandler(stream, flush_seconds=60, max_pending=3), "test.batched.bound")
    for n in range(3):
        logger.info("line %d", n)
    assert stream.getvalue() == "line 0\nline 1\nline 2\n"


def test_a_forked_child_does_not_write_its_parents_pending_lines(tmp_path: Path) -> None:
    path = tmp_path / "log"
    with path.open("a") as stream:
        handler = BatchedStreamHandler(stream, flush_seconds=60)
        logger = make_logger(handler, "test.batched.fork")
        logger.info("parent's line")
        pid = os.fork()
        if pid == 0:  # the child: what a Gunicorn worker does when it reconfigures logging
            handler.flush()
            handler.close()
            os._exit(0)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert path.read_text() == ""
        handler.flush()
    assert path.read_text() == "parent's line\n"


def test_closing_stops_the_flusher_and_writes_what_is_pending() -> None:
    stream = io.StringIO()
    handler = BatchedStreamHandler(stream, flush_seconds=60)
    logger = make_logger(handler, "test.batched.close")
    logger.info("last words")
    flusher = handler.flusher
    assert flusher is not None and flusher.is_alive()
    handler.close()
    assert stream.getvalue() == "last words\n"
    flusher.join(5)
    assert not flusher.is_alive()


def test_a_closed_stream_ends_the_flusher_quietly() -> None:
    stream = io.StringIO()
    handler = BatchedStreamHandler(stream, flush_seconds=0.01)
    logger = make_logger(handler, "test.batched.closed-stream")
    logger.info("written")
    assert wait_for(lambda: stream.getvalue() == "written\n")
    flusher = handler.flusher
    assert flusher is not None
    logger.info("pending when the stream closes")
    stream.close()
    flusher.join(5)
    assert not flusher.is_alive()
