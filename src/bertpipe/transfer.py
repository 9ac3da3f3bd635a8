"""Download one URL into a file over HTTP(S): retries with backoff, Range resume, a low-speed limit.

What arrived stays in the file when an attempt fails, and the next attempt (or the next run)
asks for the rest with a Range request. Connection trouble, HTTP 429 and 5xx, and a body cut
short are retried with exponential backoff. No server can hold a download for ever: an attempt
whose body arrives slower than a curl-style low-speed limit is ended by a watchdog thread, and
a URL whose attempts keep stalling is given up (see `HttpPolicy`). Giving up raises
`TransferError`, whose message says why.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import re
import socket
import threading
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

import requests
import urllib3
from tqdm import tqdm

from bertpipe import __version__

log = logging.getLogger(__name__)

USER_AGENT = f"bertpipe/{__version__} (+python-requests)"  # some hosts refuse default client UAs
CHUNK = 1 << 16  # most bytes per read and per write while streaming


@dataclass(frozen=True)
class HttpPolicy:
    """How hard to try one HTTP mirror before moving on to the next.

    An attempt is abandoned as "too slow" when fewer than `low_speed_bytes * low_speed_time_s`
    body bytes arrived in the last `low_speed_time_s` seconds, counted from the attempt's start
    (checked every min(1, low_speed_time_s / 10) s): a server that never answers, or answers a
    byte at a time, headers included, ends there. So does a connection that goes silent for
    `read_timeout_s`, or takes longer than `connect_timeout_s` to open. Such a stall counts as an
    attempt, and the mirror is given up after `stall_attempts` of them, or after `attempts` in all.
    A transfer that keeps above the limit is never cut short, however long it takes.

    With the defaults, a mirror that never answers, or trickles, is given up after 2 attempts
    of at most 31 s and a 1 s wait: within 63 s. One that never reaches 1 KiB/s in any way is
    given up within 5 attempts of at most 31 s and 15 s of waits: 170 s.
    """

    attempts: int = 5  # requests per mirror, the first one included
    stall_attempts: int = 2  # of those, how many may end too slow before the mirror is given up
    backoff_s: float = 1.0  # the wait before retry k is backoff_s * 2**(k-1)
    connect_timeout_s: float = 10.0
    read_timeout_s: float = 30.0  # the longest silence of the connection
    low_speed_bytes: int = 1024  # bytes per second (0: no low-speed limit) ...
    low_speed_time_s: float = 30.0  # ... averaged over this many seconds


DEFAULT_HTTP = HttpPolicy()


class TransferError(Exception):
    """The URL could not be downloaded (retries used up, or a failure no retry fixes); the
    message says why."""


class _Transient(Exception):
    """A failure worth retrying: connection trouble, HTTP 429 or 5xx, a body cut short."""


class _Stalled(_Transient):
    """An attempt that timed out or fell below the low-speed limit."""


def download(url: str, dest: Path, http: HttpPolicy) -> int:
    """Complete `dest` from `url`, resuming what is there, retrying transient failures.

    Returns the offset at which the last response's body went into `dest` (0: that one response
    holds the whole file). On failure `dest` keeps what arrived, for the next run to resume.
    """
    have = dest.stat().st_size if dest.exists() else 0
    if have:
        log.info("%s: resuming the %d bytes an earlier run saved in %s", url, have, dest)
    stalls = 0
    for attempt in range(1, http.attempts + 1):
        try:
            return _stream(url, dest, http)
        except _Transient as err:
            stalls += isinstance(err, _Stalled)
            tried = f"{attempt} attempt{'s' if attempt > 1 else ''}"
            if isinstance(err, _Stalled) and stalls >= http.stall_attempts:
                raise TransferError(f"{err} (gave up after {tried}, {stalls} too slow)") from None
            if attempt == http.attempts:
                raise TransferError(f"{err} (gave up after {tried})") from None
            delay = http.backoff_s * 2 ** (attempt - 1)
            log.warning(
                "%s: %s; retry %d of %d in %.2g s", url, err, attempt, http.attempts - 1, delay
            )
            time.sleep(delay)
    raise AssertionError("unreachable")


def _stream(url: str, dest: Path, http: HttpPolicy) -> int:
    """One GET under a watchdog: resume with a Range request when part of the file is there,
    else start over. Returns the offset the body was written at."""
    have = dest.stat().st_size if dest.exists() else 0
    headers = {"Range": f"bytes={have}-"} if have else {}
    timeout = (http.connect_timeout_s, http.read_timeout_s)
    dog = _Watchdog(http)
    try:
        # A session per attempt: its connections are new, so the watchdog sees their sockets.
        with (
            _session() as session,
            dog,
            session.get(url, headers=headers, stream=True, timeout=timeout) as r,
        ):
            dog.answered = True
            if r.status_code == 429 or r.status_code >= 500:
                raise _Transient(f"HTTP {r.status_code} {r.reason}")
            if r.status_code == 416 and have:
                if _complete_size(r) == have:  # a run was killed after the last byte
                    log.info("%s: the partial download is already complete", url)
                    return have
                dest.unlink()
                raise _Transient("HTTP 416 for a resumed download; starting over")
            if r.status_code not in (200, 206):
                raise TransferError(f"HTTP {r.status_code} {r.reason}")
            offset = _resume_offset(r, have)
            _save_body(r, dest, offset, dog)
            return offset
    except requests.RequestException as err:
        if dog.reason:  # the watchdog ended it; what the connection said then is beside the point
            raise _Stalled(dog.reason) from None
        if isinstance(err, requests.exceptions.SSLError):  # a certificate will not fix itself
            raise TransferError(_describe(err)) from None
        if isinstance(err, (requests.ConnectTimeout, requests.ReadTimeout)):
            raise _Stalled(_describe(err)) from None
        if isinstance(err, (requests.ConnectionError, requests.Timeout)):
            raise _Transient(_describe(err)) from None
        raise TransferError(_describe(err)) from None


def _describe(err: Exception) -> str:
    """requests' message without urllib3's pool and object reprs, e.g. '[Errno 111] ...'."""
    text = str(err)
    errno = re.search(r"\[Errno -?\d+\][^'\")]*", text)
    detail = errno[0] if errno else re.sub(r"^HTTPS?ConnectionPool\([^)]*\): ", "", text)
    return f"{type(err).__name__}: {detail}"


def _complete_size(r: requests.Response) -> int | None:
    """The full size a 416 response states (`Content-Range: bytes */N`), if it does."""
    match = re.fullmatch(r"bytes \*/(\d+)", r.headers.get("Content-Range", "").strip())
    return int(match[1]) if match else None


def _resume_offset(r: requests.Response, have: int) -> int:
    """Where this response's body goes in the file: `have` for a matching 206, 0 for a 200."""
    if r.status_code == 200:
        if have:
            log.info("server sent the whole file instead of a range: restarting the download")
        return 0
    match = re.match(r"bytes (\d+)-", r.headers.get("Content-Range", ""))
    if not match or int(match[1]) != have:
        raise _Transient(f"asked for bytes {have}- but got {r.headers.get('Content-Range')!r}")
    if have:
        log.info("resuming at byte %d", have)
    return have


def _save_body(r: requests.Response, dest: Path, offset: int, dog: _Watchdog) -> None:
    """Write the body at `offset` of `dest` as it arrives; a short body is transient (the next
    try resumes), a stalled one too (`_Stalled`)."""
    length = r.headers.get("Content-Length")
    expected = offset + int(length) if length and length.isdigit() else None
    name = urllib.parse.urlsplit(r.url).path.rsplit("/", 1)[-1]
    bar = tqdm(
        total=expected,
        initial=offset,
        desc=f"download {name}",
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
    )
    error = None
    with open(dest, "ab" if offset else "wb") as f, bar:
        try:
            # read1 returns what has arrived (up to CHUNK) instead of waiting for a full chunk,
            # so the watchdog counts bytes as they come.
            while chunk := r.raw.read1(CHUNK):
                f.write(chunk)
                dog.received += len(chunk)
                bar.update(len(chunk))
                if dog.reason:  # it could not reach the socket (e.g. behind a SOCKS proxy)
                    break
        except urllib3.exceptions.HTTPError as err:  # timeouts, resets, a body cut short
            error = err
        size = f.tell()
    if expected is not None and size == expected:
        return
    if dog.reason:
        raise _Stalled(dog.reason)
    if isinstance(error, urllib3.exceptions.ReadTimeoutError):
        raise _Stalled(_describe(error))
    if error is not None or expected is not None:
        raise _Transient(f"connection closed after {size} of {expected or 'unknown'} bytes")


def _session() -> requests.Session:
    session = requests.Session()
    adapter = _WatchedAdapter()
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    # identity: Content-Length and Range then count the bytes we store.
    session.headers.update({"User-Agent": USER_AGENT, "Accept-Encoding": "identity"})
    return session


_watched = threading.local()  # .dog: the _Watchdog of the attempt running in this thread


class _Watchdog:
    """Ends an attempt that falls below the policy's low-speed limit (see `HttpPolicy`).

    It runs in its own thread, so it acts while the attempt is blocked in a read, and it counts
    from the attempt's start, so a server that sends no body (no answer, or headers a byte at a
    time) is ended too. It ends an attempt by shutting down the socket of each connection opened
    during the attempt (`_WatchedConnection`), which makes the blocked read fail at once.
    """

    def __init__(self, http: HttpPolicy):
        self.window = http.low_speed_time_s
        self.limit = http.low_speed_bytes
        self.received = 0  # body bytes so far, counted by the reading thread
        self.answered = False  # whether response headers arrived
        self.reason: str | None = None  # why it ended the attempt; None while it has not
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="download-watchdog", daemon=True)

    def __enter__(self) -> _Watchdog:
        _watched.dog = self
        if self.limit > 0 and self.window > 0:  # else the limit is off
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        _watched.dog = None
        self._done.set()
        if self._thread.is_alive():
            self._thread.join()

    def watch(self, sock: socket.socket) -> None:
        """Called with each new connection's socket."""
        with self._lock:
            self._sockets.append(sock)
            if self.reason:
                self._shut_down()

    def _run(self) -> None:
        start = time.monotonic()
        samples = collections.deque([(start, 0)])  # (time, bytes received by then)
        while not self._done.wait(min(1.0, self.window / 10)):
            now, received = time.monotonic(), self.received
            samples.append((now, received))
            while samples[1][0] <= now - self.window:  # keep one sample at or before the window
                samples.popleft()
            since, before = samples[0]
            if now - start < self.window or received - before >= self.limit * self.window:
                continue
            if self.answered:
                reason = (
                    f"too slow: {received - before} bytes in {now - since:.3g} s, below "
                    f"{self.limit} bytes/s over {self.window:g} s"
                )
            else:
                reason = f"too slow: no response in {now - start:.3g} s"
            with self._lock:
                self.reason = reason
                self._shut_down()
            return

    def _shut_down(self) -> None:
        for sock in self._sockets:
            with contextlib.suppress(OSError):  # already closed
                socket.socket.shutdown(sock, socket.SHUT_RDWR)  # under TLS too: the same fd


class _WatchedConnection:
    """Mixed into urllib3's connections: hands each new socket to the attempt's watchdog, as
    soon as it is connected (before a TLS handshake or a proxy tunnel)."""

    def _new_conn(self) -> socket.socket:
        sock = super()._new_conn()
        dog = getattr(_watched, "dog", None)
        if dog is not None:
            dog.watch(sock)
        return sock


class _HTTPConnection(_WatchedConnection, urllib3.connection.HTTPConnection):
    pass


class _HTTPSConnection(_WatchedConnection, urllib3.connection.HTTPSConnection):
    pass


class _HTTPPool(urllib3.HTTPConnectionPool):
    ConnectionCls = _HTTPConnection


class _HTTPSPool(urllib3.HTTPSConnectionPool):
    ConnectionCls = _HTTPSConnection


_POOLS = {"http": _HTTPPool, "https": _HTTPSPool}


class _WatchedAdapter(requests.adapters.HTTPAdapter):
    """requests' adapter with connections that report their sockets to the watchdog, direct or
    through an HTTP(S) proxy (a SOCKS proxy keeps its own connections)."""

    def init_poolmanager(self, *args, **kwargs) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = _POOLS

    def proxy_manager_for(self, proxy, **proxy_kwargs):
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        if manager.pool_classes_by_scheme is urllib3.poolmanager.pool_classes_by_scheme:
            manager.pool_classes_by_scheme = _POOLS
        return manager
