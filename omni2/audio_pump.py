"""Runs the streaming vocoder beside generation: inline, or on a worker thread.

On a GPU the LLM/TTS decode loop is launch-bound while flow matching is compute-bound, so running
the vocoder on its own thread overlaps the two; it also keeps text events flowing while a chunk is
being vocoded. Pieces always come back in submission order. Torch releases the GIL inside ops, and
``inference_mode`` is thread-local, so the worker enters it itself.
"""

from __future__ import annotations

import queue
import threading
import time
from typing import Any

import numpy as np
import torch

Piece = tuple[np.ndarray, float]  # (samples, seconds spent vocoding)


class AudioPump:
    def __init__(self, stream: Any, threaded: bool) -> None:
        self.stream = stream
        self.threaded = threaded
        self._done: queue.Queue[Piece | BaseException] = queue.Queue()
        self._pending = 0
        self._inbox: queue.Queue[tuple[list[int], bool] | None] | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        if threaded:
            self._inbox = queue.Queue()
            self._thread = threading.Thread(target=self._work, name="omni2-vocoder", daemon=True)
            self._thread.start()

    def _vocode(self, units: list[int], final: bool) -> Piece:
        t0 = time.perf_counter()
        with torch.inference_mode():
            wav = self.stream.push(units) if units or not final else np.zeros(0, np.float32)
            if final:
                tail = self.stream.finalize()
                wav = np.concatenate([wav, tail]) if wav.size and tail.size else (wav if wav.size else tail)
        return wav, time.perf_counter() - t0

    def _work(self) -> None:
        inbox = self._inbox  # close() drops the attribute; the worker keeps its own reference
        assert inbox is not None
        while True:
            item = inbox.get()
            if item is None or self._stop.is_set():
                return
            try:
                self._done.put(self._vocode(*item))
            except BaseException as exc:  # noqa: BLE001 - handed to the engine thread, which re-raises
                self._done.put(exc)
                return

    def submit(self, units: list[int], final: bool) -> None:
        """Queue new units (``final``: also flush the stream)."""
        self._pending += 1
        if self._inbox is not None:
            self._inbox.put((list(units), final))
        else:
            self._done.put(self._vocode(list(units), final))

    def _take(self, block: bool) -> list[Piece]:
        out: list[Piece] = []
        while self._pending:
            try:
                item = self._done.get(block=block and not out)
            except queue.Empty:
                break
            self._pending -= 1
            if isinstance(item, BaseException):
                raise item
            out.append(item)
        return out

    def ready(self) -> list[Piece]:
        """Pieces finished so far (never waits)."""
        return self._take(block=False)

    def drain(self) -> list[Piece]:
        """Every remaining piece (waits for the worker)."""
        out: list[Piece] = []
        while self._pending:
            out.extend(self._take(block=True))
        return out

    def close(self) -> None:
        """Stop the worker: queued work is dropped (cancel, error), the call in flight is waited for.

        Waiting matters: a worker left inside a torch op while the interpreter exits aborts the
        process. One vocoder call is at most a window's worth of work.
        """
        if self._thread is None:
            return
        self._stop.set()
        assert self._inbox is not None
        self._inbox.put(None)
        self._thread.join(timeout=120)
        self._thread, self._inbox = None, None
