"""A static HTTP server on 127.0.0.1 for remote-data tests and benchmarks: byte ranges, request counting.

Python's :class:`http.server.SimpleHTTPRequestHandler` serves whole files only; GDAL's ``/vsicurl/`` and
fsspec read COG tiles, TIFF strips and Zarr chunks with ``Range: bytes=a-b`` requests, so this handler
answers a single range with ``206 Partial Content`` (several ranges in one header are answered with the whole
file, which HTTP allows and clients handle). It speaks HTTP/1.1 so clients keep connections alive, as they
would against a real object store, and counts every request by method and path so a test can see what a
client asked for (through :data:`STATS_PATH`, since the server runs in a child process: see :class:`Served`).
It can also play an object store under load: ``unavailable`` answers ``503 Service Unavailable`` to GETs of
chosen paths, a few times or always, and ``dropped`` closes the connection on them without an answer (what a
client sees when a load balancer or an overloaded server hangs up).
"""
from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import threading
import urllib.request
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from http import HTTPStatus
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import BinaryIO

_RANGE = re.compile(r"bytes=(\d*)-(\d*)$")
STATS_PATH = "/_requests"  # answers the counts so far as JSON


class RangeRequestHandler(SimpleHTTPRequestHandler):
    """``SimpleHTTPRequestHandler`` with single byte-range GETs and a request log on the server."""

    protocol_version = "HTTP/1.1"  # keep-alive: a client reading many tiles reuses its connection
    server: CountingServer

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
        pass  # tests would drown in one line per tile

    def send_head(self) -> BinaryIO | None:
        if self.path == STATS_PATH:
            return self._send_counts()
        self.server.record(self.command, self.path)
        if self.command == "GET" and self.server.fails_now(self.server.dropped, self.path):
            self.close_connection = True  # nothing is sent: the client reads a closed connection
            return None
        if self.command == "GET" and self.server.fails_now(self.server.unavailable, self.path):
            self.send_response(HTTPStatus.SERVICE_UNAVAILABLE)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return None
        match = _RANGE.match(self.headers.get("Range", "").strip())
        path = Path(self.translate_path(self.path))
        if match is None or not path.is_file() or not any(match.groups()):
            return super().send_head()
        size = path.stat().st_size
        first, last = match.groups()
        start, end = (size - int(last), size - 1) if not first else (int(first), min(int(last or size - 1), size - 1))
        if start >= size or start > end:
            self.send_response(HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE)
            self.send_header("Content-Range", f"bytes */{size}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return None
        handle = open(path, "rb")  # noqa: SIM115 - copyfile reads it and do_GET/do_HEAD close it
        handle.seek(start)
        self.send_response(HTTPStatus.PARTIAL_CONTENT)
        self.send_header("Content-Type", self.guess_type(str(path)))
        self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.send_header("Content-Length", str(end - start + 1))
        self.end_headers()
        self._remaining = end - start + 1
        return handle

    def _send_counts(self) -> BinaryIO:
        body = json.dumps(self.server.counts()).encode()
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        return io.BytesIO(body)

    def copyfile(self, source: BinaryIO, outputfile: BinaryIO) -> None:
        remaining = getattr(self, "_remaining", None)
        if remaining is None:
            return super().copyfile(source, outputfile)
        self._remaining = None
        outputfile.write(source.read(remaining))

    def end_headers(self) -> None:
        self.send_header("Accept-Ranges", "bytes")  # tells clients (GDAL, fsspec) they may ask for ranges
        super().end_headers()


class CountingServer(ThreadingHTTPServer):
    """A threaded server that counts the requests it answers, by method and path."""

    daemon_threads = True
    request_queue_size = 128  # GDAL and aiohttp open several connections at once; the default 5 drops some

    def __init__(self, root: Path, unavailable: dict[str, int | None] | None = None,
                 dropped: dict[str, int | None] | None = None) -> None:
        super().__init__(("127.0.0.1", 0), partial(RangeRequestHandler, directory=os.fspath(root)))
        self.requests: Counter[str] = Counter()
        self.unavailable = unavailable or {}
        self.dropped = dropped or {}
        self._failed: Counter[str] = Counter()
        self._lock = threading.Lock()

    def fails_now(self, faults: dict[str, int | None], path: str) -> bool:
        """Whether this GET of ``path`` fails (:attr:`unavailable`: a 503; :attr:`dropped`: no answer): the first
        ``n`` GETs of each path containing a key of ``faults`` mapped to ``n``, or every GET (``None``)."""
        with self._lock:
            for key, times in faults.items():
                if key in path and (times is None or self._failed[path] < times):
                    self._failed[path] += 1
                    return True
        return False

    def record(self, method: str, path: str) -> None:
        with self._lock:
            self.requests[f"{method} {path}"] += 1

    def counts(self) -> dict[str, int]:
        with self._lock:
            return dict(self.requests)


class Served:
    """Files under a folder served over HTTP by a server in a child process (this file run as a script).

    A process, not a thread: rasterio holds the GIL through parts of GDAL's open (reading the geotransform
    may fetch sidecar files), so a server thread in the same interpreter could never answer and GDAL would
    wait forever.
    """

    def __init__(self, root: str | Path, unavailable: dict[str, int | None] | None = None,
                 dropped: dict[str, int | None] | None = None) -> None:
        command = [sys.executable, __file__, os.fspath(root), json.dumps(unavailable or {}), json.dumps(dropped or {})]
        self._process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
        port = self._process.stdout.readline().strip()  # the server prints its port once it listens
        if not port.isdigit():
            self.close()
            raise RuntimeError(f"the test HTTP server for {root} did not start (it printed {port!r})")
        self.url = f"http://127.0.0.1:{port}"
        self._seen: dict[str, int] = {}

    def requests(self) -> dict[str, int]:
        """``{"METHOD /path": n}`` since the last :meth:`reset` (the count itself is not counted)."""
        with urllib.request.urlopen(f"{self.url}{STATS_PATH}") as response:
            total = json.load(response)
        return {key: n - self._seen.get(key, 0) for key, n in total.items() if n > self._seen.get(key, 0)}

    def count(self) -> int:
        """How many requests were answered since the last :meth:`reset`."""
        return sum(self.requests().values())

    def reset(self) -> None:
        with urllib.request.urlopen(f"{self.url}{STATS_PATH}") as response:
            self._seen = json.load(response)

    def close(self) -> None:
        self._process.kill()
        self._process.wait()
        self._process.stdout.close()


@contextmanager
def serve(root: str | Path, unavailable: dict[str, int | None] | None = None,
          dropped: dict[str, int | None] | None = None) -> Iterator[Served]:
    """Serve the files under ``root`` at ``served.url`` (a free port on 127.0.0.1) until the block ends.

    ``unavailable`` (``{"flaky": 2, "down": None}``): GETs of a path containing a key are answered with 503,
    the first ``n`` of each such path or all of them (``None``); ``dropped``: the same GETs get no answer, the
    connection is closed.
    """
    served = Served(root, unavailable, dropped)
    try:
        yield served
    finally:
        served.close()


if __name__ == "__main__":
    server = CountingServer(Path(sys.argv[1]), json.loads(sys.argv[2]), json.loads(sys.argv[3]))
    print(server.server_address[1], flush=True)
    server.serve_forever()
