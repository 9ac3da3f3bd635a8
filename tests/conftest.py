"""Shared fixtures.

`one_thread` (every test): tiny models run fastest on one torch thread, and on a busy 2-core
machine two OpenMP threads that spin-wait for each other after every small op made a 1 s test
take minutes.

`http_server`: a real HTTP server on 127.0.0.1 for download tests, offline.

It serves the files under `server.root` (Range requests included) and can be told to misbehave
for a given name, so retries, resume and error pages are tested against real sockets:

    (server.root / "a.zip").write_bytes(data)
    server.url("a.zip")                        # "http://127.0.0.1:<port>/a.zip"
    server.fail("a.zip", 503, times=2)         # the next 2 requests get HTTP 503, then normal
    server.fail("a.zip", 200, body=b"<?xml")   # any status and body; times=None (default): always
    server.cut("a.zip", after=100)             # full headers, 100 body bytes, hang up (next 1)
    server.hang("a.zip")                       # read the request, never answer (times=None)
    server.throttle("a.zip", rate=1)           # full headers, then the body at 1 byte/s
    server.ranges = False                      # ignore Range headers: always the whole file
    server.hits                                # every request: Hit(name="a.zip", headers={...})
    server.hits_for("a.zip")                   # the requests for one name

Rules for a name queue up and apply in the order given. Header names in `hits` are lower-case.
A hanging or throttled reply gives up after MISBEHAVE_S seconds (or when the server stops), so
a client that would wait for ever fails its test instead of hanging the run.
"""

from __future__ import annotations

import re
import threading
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@dataclass
class Hit:
    name: str  # the path asked for, without the leading '/'
    headers: dict[str, str]  # lower-case names


MISBEHAVE_S = 20.0  # the longest a hanging or throttled reply lasts


@dataclass
class _Rule:
    times: int | None  # requests still affected; None: every request
    status: int = 200
    body: bytes = b""
    cut_after: int | None = None  # serve the file normally but hang up after this many bytes
    hang: bool = False  # never answer
    rate: float | None = None  # serve the file normally at this many bytes per second


class LoopbackServer:
    def __init__(self, root: Path):
        self.root = root
        self.ranges = True
        self.hits: list[Hit] = []
        self._rules: dict[str, list[_Rule]] = {}
        self._lock = threading.Lock()
        self.stopping = threading.Event()  # wakes hanging and throttled replies
        handler = type("Handler", (_Handler,), {"owner": self})
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def __enter__(self) -> LoopbackServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join()

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self._httpd.server_port}/{urllib.parse.quote(name)}"

    def fail(self, name: str, status: int, body: bytes = b"", times: int | None = None) -> None:
        """Answer `name` with `status` and `body` for the next `times` requests (None: always)."""
        self._add(name, _Rule(times, status=status, body=body))

    def cut(self, name: str, after: int, times: int = 1) -> None:
        """Drop the connection after `after` body bytes of `name`, for the next `times` requests."""
        self._add(name, _Rule(times, cut_after=after))

    def hang(self, name: str, times: int | None = None) -> None:
        """Read the request for `name` and never answer, for the next `times` (None: always)."""
        self._add(name, _Rule(times, hang=True))

    def throttle(self, name: str, rate: float, times: int | None = None) -> None:
        """Serve `name` at `rate` body bytes per second, in pieces of max(1, rate/20) bytes."""
        self._add(name, _Rule(times, rate=rate))

    def hits_for(self, name: str) -> list[Hit]:
        return [hit for hit in self.hits if hit.name == name]

    def _add(self, name: str, rule: _Rule) -> None:
        with self._lock:
            self._rules.setdefault(name, []).append(rule)

    def _take(self, name: str) -> _Rule | None:
        """The rule for this request, if any; used-up rules drop off the queue."""
        with self._lock:
            rules = self._rules.get(name, [])
            if not rules:
                return None
            rule = rules[0]
            if rule.times is not None:
                rule.times -= 1
                if rule.times <= 0:
                    rules.pop(0)
            return rule


class _Handler(BaseHTTPRequestHandler):
    owner: LoopbackServer

    def do_GET(self) -> None:
        name = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path.lstrip("/"))
        self.owner.hits.append(Hit(name, {k.lower(): v for k, v in self.headers.items()}))
        rule = self.owner._take(name)
        if rule is not None and rule.hang:
            self.owner.stopping.wait(MISBEHAVE_S)
            self.close_connection = True
            return None
        if rule is not None and rule.cut_after is None and rule.rate is None:
            return self._reply(rule.status, rule.body)
        cut = rule.cut_after if rule else None
        rate = rule.rate if rule else None
        path = (self.owner.root / name).resolve()
        if not path.is_file() or not path.is_relative_to(self.owner.root.resolve()):
            return self._reply(404, b"not found")
        data = path.read_bytes()
        match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range", ""))
        if not (self.owner.ranges and match):
            return self._reply(200, data, cut_after=cut, rate=rate)
        start = int(match[1])
        if start >= len(data):
            return self._reply(416, b"", {"Content-Range": f"bytes */{len(data)}"})
        extra = {"Content-Range": f"bytes {start}-{len(data) - 1}/{len(data)}"}
        self._reply(206, data[start:], extra, cut_after=cut, rate=rate)

    def _reply(
        self,
        status: int,
        body: bytes,
        extra: dict[str, str] | None = None,
        cut_after: int | None = None,
        rate: float | None = None,
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        if self.owner.ranges:
            self.send_header("Accept-Ranges", "bytes")
        for key, value in (extra or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.close_connection = True  # after a cut, the client sees the socket close mid-body
        body = body if cut_after is None else body[:cut_after]
        if rate is None:
            self.wfile.write(body)
            return
        piece = max(1, int(rate / 20))
        start = time.monotonic()
        for sent in range(0, len(body), piece):
            # on schedule, not after fixed sleeps: the rate holds however slow the writes are
            delay = start + sent / rate - time.monotonic()
            if self.owner.stopping.wait(max(delay, 0)) or time.monotonic() - start > MISBEHAVE_S:
                return
            try:
                self.wfile.write(body[sent : sent + piece])
            except OSError:  # the client hung up
                return

    def log_message(self, format: str, *args: object) -> None:  # keep test output quiet
        pass


@pytest.fixture
def http_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[LoopbackServer]:
    """A started LoopbackServer serving `tmp_path / "www"`; stopped after the test."""
    for var in ("no_proxy", "NO_PROXY"):  # a proxy from the environment must not see loopback
        monkeypatch.setenv(var, "127.0.0.1,localhost")
    root = tmp_path / "www"
    root.mkdir()
    with LoopbackServer(root) as server:
        yield server
