"""Downloads against a real loopback HTTP server (tests/conftest.py) and local copies: mirror
fall-through, SHA-1 rules, retries, Range resume within and across runs, silent, trickling and
slow mirrors, error pages, unsafe archives (escapes, bombs, lying headers), no leftovers."""

from __future__ import annotations

import hashlib
import io
import json
import socket
import struct
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import yaml

from bertpipe import archives, download, transfer
from bertpipe.archives import ArchiveLimits
from bertpipe.config import DownloadConfig
from bertpipe.errors import UserError
from bertpipe.transfer import HttpPolicy

REPO = Path(__file__).resolve().parents[1]
FAST = HttpPolicy(attempts=3, backoff_s=0.01, connect_timeout_s=2.0, read_timeout_s=5.0)
_rng = np.random.default_rng(0)
CONTENT = {  # the train file is large enough for a cut mid-body to leave a real partial file
    "wiki.train.tokens": _rng.bytes(200_000),
    "wiki.valid.tokens": b" = Valkyria = \n the game began in 2010 . \n",
    "wiki.test.tokens": b" = Robert = \n he was born . \n",
}
XML_PAGE = b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>AccessDenied</Code></Error>'


def sha1(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()


def make_zip(members: dict[str, bytes], dirs: tuple[str, ...] = ()) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as zf:
        for d in dirs:
            zf.writestr(zipfile.ZipInfo(d), b"")  # a name ending in '/' is a directory entry
        for name, data in members.items():
            zf.writestr(zipfile.ZipInfo(name), data)
    return buffer.getvalue()


ORIGINAL = make_zip({f"wikitext-2/{k}": v for k, v in CONTENT.items()}, dirs=("wikitext-2/",))
ORIGINAL_SHA1 = sha1(ORIGINAL)


def cfg_for(
    mirrors: list[str], archive_sha1: str | None = ORIGINAL_SHA1, member_sha1s: bool = False
) -> DownloadConfig:
    files = {name: sha1(data) if member_sha1s else None for name, data in CONTENT.items()}
    return DownloadConfig(mirrors=tuple(mirrors), sha1=archive_sha1, files=files)


def partial_of(out: Path, mirror: str) -> Path:
    """Where fetching into `out` keeps the download of `mirror` until it passes."""
    return download.partial_path(download.partials_for(out), mirror)


def serve(server, name: str, data: bytes) -> str:
    (server.root / name).write_bytes(data)
    return server.url(name)


def assert_extracted(out: Path) -> None:
    assert sorted(p.name for p in out.iterdir()) == sorted(CONTENT)
    for name, data in CONTENT.items():
        assert (out / name).read_bytes() == data


def test_http_mirror_passes_on_archive_sha1(http_server, tmp_path):
    url = serve(http_server, "wikitext-2-v1.zip", ORIGINAL)
    out = tmp_path / "data" / "download_wikitext"
    metrics = download.fetch(cfg_for([url]), out, FAST)
    assert_extracted(out)
    assert metrics == {
        "mirror": url,
        "archive_bytes": len(ORIGINAL),
        "archive_sha1": sha1(ORIGINAL),
        "files": {name: len(data) for name, data in CONTENT.items()},
    }
    (hit,) = http_server.hits
    assert hit.headers["user-agent"] == transfer.USER_AGENT
    assert transfer.USER_AGENT.startswith("bertpipe/")
    assert [p.name for p in out.parent.iterdir()] == [out.name]  # no temporary leftovers


def test_repackaged_mirror_passes_on_member_sha1s(http_server, tmp_path):
    # Other layout, extra files, macOS resource forks: only the listed basenames count.
    repacked = make_zip(
        {
            "data/wikitext/wiki.train.tokens": CONTENT["wiki.train.tokens"],
            "wiki.valid.tokens": CONTENT["wiki.valid.tokens"],
            "x/y/wiki.test.tokens": CONTENT["wiki.test.tokens"],
            "__MACOSX/x/y/wiki.test.tokens": b"resource fork",
            "README": b"repackaged",
        },
        dirs=("data/", "data/wikitext/", "wiki.train.tokens/"),
    )
    url = serve(http_server, "repacked.zip", repacked)
    metrics = download.fetch(cfg_for([url], member_sha1s=True), tmp_path / "out", FAST)
    assert_extracted(tmp_path / "out")
    assert metrics["archive_sha1"] == sha1(repacked) != sha1(ORIGINAL)


@pytest.mark.parametrize(
    ("member_sha1s", "reason"),
    [
        (False, "archive SHA-1"),  # a member without a SHA-1: only the archive's could vouch
        (True, "has SHA-1"),  # every member hashed, but one differs
    ],
)
def test_repackaged_mirror_that_cannot_be_vouched_for_fails(
    http_server, tmp_path, member_sha1s, reason
):
    changed = make_zip({**CONTENT, "wiki.test.tokens": b"something else\n"})
    url = serve(http_server, "changed.zip", changed)
    with pytest.raises(UserError, match=reason):
        download.fetch(cfg_for([url], member_sha1s=member_sha1s), tmp_path / "out", FAST)
    assert not (tmp_path / "out").exists()


def test_wrong_sha1_falls_through_to_the_next_mirror(http_server, tmp_path):
    bad = serve(http_server, "bad.zip", make_zip({"wikitext-2/wiki.train.tokens": b"stale\n"}))
    good = serve(http_server, "good.zip", ORIGINAL)
    metrics = download.fetch(cfg_for([bad, good]), tmp_path / "out", FAST)
    assert metrics["mirror"] == good
    assert_extracted(tmp_path / "out")
    assert [hit.name for hit in http_server.hits] == ["bad.zip", "good.zip"]


@pytest.mark.parametrize("existing", [False, True])
def test_all_mirrors_failing_lists_each_and_leaves_output_as_it_was(
    http_server, tmp_path, existing
):
    out = tmp_path / "data" / "out"
    if existing:
        out.mkdir(parents=True)
        (out / "old.txt").write_text("previous run")
    serve(http_server, "cut.zip", ORIGINAL)
    http_server.cut("cut.zip", after=1000, times=None)  # every attempt dies mid-body
    mirrors = [
        http_server.url("missing.zip"),
        serve(http_server, "page.zip", XML_PAGE),
        str(tmp_path / "nowhere.zip"),
        http_server.url("cut.zip"),
    ]
    with pytest.raises(UserError) as info:
        download.fetch(cfg_for(mirrors), out, FAST)
    headline, *lines, note = str(info.value).splitlines()
    assert "none of the 4 mirrors passed" in headline
    reasons = [
        "HTTP 404",
        "not a zip archive",
        "no such file",
        f"of {len(ORIGINAL)} bytes (gave up after 3 attempts)",
    ]
    assert len(lines) == 4
    for line, mirror, reason in zip(lines, mirrors, reasons, strict=True):
        assert mirror in line and reason in line
    if existing:
        assert [p.name for p in out.iterdir()] == ["old.txt"]
        assert (out / "old.txt").read_text() == "previous run"
    else:
        assert not out.exists()
    # Only the interrupted download is kept, for the next run: 1000 bytes more on each attempt.
    partial = partial_of(out, mirrors[3])
    assert f"partial downloads in {partial.parent} are resumed by the next run" in note
    assert list(partial.parent.iterdir()) == [partial]
    assert partial.read_bytes() == ORIGINAL[:3000]
    assert sorted(p.name for p in out.parent.iterdir()) == sorted(
        [partial.parent.name, *([out.name] if existing else [])]
    )


def test_http_404_is_not_retried(http_server, tmp_path):
    with pytest.raises(UserError, match="HTTP 404"):
        download.fetch(cfg_for([http_server.url("gone.zip")]), tmp_path / "out", FAST)
    assert len(http_server.hits_for("gone.zip")) == 1


def test_xml_error_page_saved_as_zip_is_named_as_such(http_server, tmp_path):
    url = serve(http_server, "wikitext-2-v1.zip", XML_PAGE)  # what d2l's dead S3 URL now serves
    with pytest.raises(UserError, match=r"not a zip archive: starts with '<\?xml version"):
        download.fetch(cfg_for([url]), tmp_path / "out", FAST)


def test_connection_cut_mid_body_is_resumed_with_range(http_server, tmp_path):
    url = serve(http_server, "w.zip", ORIGINAL)
    http_server.cut("w.zip", after=150_000)
    metrics = download.fetch(cfg_for([url]), tmp_path / "out", FAST)
    assert_extracted(tmp_path / "out")
    assert metrics["archive_sha1"] == sha1(ORIGINAL)
    first, second = http_server.hits_for("w.zip")
    assert "range" not in first.headers
    assert second.headers["range"] == "bytes=150000-"  # every byte that arrived was kept


def test_server_without_range_support_restarts_the_download(http_server, tmp_path):
    url = serve(http_server, "w.zip", ORIGINAL)
    http_server.ranges = False
    http_server.cut("w.zip", after=150_000)
    download.fetch(cfg_for([url]), tmp_path / "out", FAST)
    assert_extracted(tmp_path / "out")
    assert len(http_server.hits_for("w.zip")) == 2


@pytest.mark.parametrize("status", [503, 429])
def test_transient_status_is_retried_until_success(http_server, tmp_path, status):
    url = serve(http_server, "w.zip", ORIGINAL)
    http_server.fail("w.zip", status, body=b"busy", times=2)
    download.fetch(cfg_for([url]), tmp_path / "out", FAST)
    assert_extracted(tmp_path / "out")
    assert len(http_server.hits_for("w.zip")) == 3


def test_persistent_503_gives_up_after_the_attempts(http_server, tmp_path):
    url = serve(http_server, "w.zip", ORIGINAL)
    http_server.fail("w.zip", 503)
    with pytest.raises(UserError, match=r"HTTP 503 .*gave up after 3 attempts"):
        download.fetch(cfg_for([url]), tmp_path / "out", FAST)
    assert len(http_server.hits_for("w.zip")) == FAST.attempts


def test_refused_connection_is_retried_then_reported(tmp_path):
    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(UserError, match=r"Connection refused.*gave up after 3 attempts"):
        download.fetch(cfg_for([f"http://127.0.0.1:{port}/w.zip"]), tmp_path / "out", FAST)


# Short low-speed limits: an attempt that gets under 1000 bytes/s over 1 s is too slow (checked
# every 0.1 s); 2 such attempts and the mirror is given up. read_timeout_s is far longer, so only
# the low-speed limit can end these tests in time.
SLOW = HttpPolicy(
    attempts=5,
    stall_attempts=2,
    backoff_s=0.1,
    connect_timeout_s=2.0,
    read_timeout_s=20.0,
    low_speed_bytes=1000,
    low_speed_time_s=1.0,
)
# 2 attempts of 1 s (+ up to a 0.1 s check interval) and a 0.1 s backoff; slack for a busy machine
SLOW_BOUND = (2 * 1.0 + 0.1, 2 * 1.1 + 0.1 + 1.5)


def test_silent_mirror_is_given_up_in_bounded_time_then_the_next_is_tried(
    http_server, tmp_path, caplog
):
    http_server.hang("silent.zip")  # accepts the connection, reads the request, never answers
    good = serve(http_server, "good.zip", ORIGINAL)
    started = time.monotonic()
    metrics = download.fetch(cfg_for([http_server.url("silent.zip"), good]), tmp_path / "o", SLOW)
    took = time.monotonic() - started
    assert metrics["mirror"] == good
    assert_extracted(tmp_path / "o")
    assert len(http_server.hits_for("silent.zip")) == SLOW.stall_attempts
    assert SLOW_BOUND[0] <= took <= SLOW_BOUND[1]
    assert "too slow: no response in 1" in caplog.text
    assert "(gave up after 2 attempts, 2 too slow)" in caplog.text


def test_trickling_mirror_is_abandoned_in_bounded_time(http_server, tmp_path):
    url = serve(http_server, "w.zip", ORIGINAL)
    http_server.throttle("w.zip", rate=1)  # headers at once, then 1 byte per second
    out = tmp_path / "out"
    started = time.monotonic()
    with pytest.raises(UserError, match=r"too slow: \d bytes in 1(\.\d+)? s, below 1000 bytes/s"):
        download.fetch(cfg_for([url]), out, SLOW)
    assert SLOW_BOUND[0] <= time.monotonic() - started <= SLOW_BOUND[1]
    first, second = http_server.hits_for("w.zip")
    # The trickled bytes are kept and the retry resumes after them.
    assert "range" not in first.headers and second.headers["range"] != "bytes=0-"
    kept = partial_of(out, url).read_bytes()
    assert 1 <= len(kept) <= 4 and ORIGINAL.startswith(kept)


def test_slow_but_steady_mirror_completes(http_server, tmp_path):
    # 80 kB/s against a limit of 1 kB/s over 1 s in SLOW: 20 kB/s over 0.5 s here.
    policy = HttpPolicy(
        attempts=1, read_timeout_s=1.0, low_speed_bytes=20_000, low_speed_time_s=0.5
    )
    url = serve(http_server, "w.zip", ORIGINAL)
    http_server.throttle("w.zip", rate=80_000)
    started = time.monotonic()
    download.fetch(cfg_for([url]), tmp_path / "out", policy)
    took = time.monotonic() - started
    assert_extracted(tmp_path / "out")
    assert len(http_server.hits_for("w.zip")) == 1
    # It lasted several low-speed windows and longer than the read timeout: neither is a limit
    # on the whole transfer.
    assert took > max(4 * policy.low_speed_time_s, policy.read_timeout_s)


def test_a_failed_run_leaves_its_partial_download_for_the_next_run_to_resume(http_server, tmp_path):
    url = serve(http_server, "w.zip", ORIGINAL)
    out = tmp_path / "data" / "out"
    http_server.cut("w.zip", after=150_000)  # the first run is killed mid-body ...
    with pytest.raises(UserError, match=r"gave up after 1 attempt\)"):
        download.fetch(cfg_for([url]), out, HttpPolicy(attempts=1))
    partial = partial_of(out, url)
    assert partial.read_bytes() == ORIGINAL[:150_000]
    download.fetch(cfg_for([url]), out, FAST)  # ... and the next run picks it up
    assert_extracted(out)
    first, second = http_server.hits_for("w.zip")
    assert "range" not in first.headers
    assert second.headers["range"] == "bytes=150000-"
    assert [p.name for p in out.parent.iterdir()] == [out.name]  # the partial is gone


def test_a_wrong_partial_download_is_discarded_and_downloaded_again(http_server, tmp_path):
    url = serve(http_server, "w.zip", ORIGINAL)
    out = tmp_path / "out"
    partial = partial_of(out, url)
    partial.parent.mkdir()
    partial.write_bytes(b"garbage!" * 10_000)  # not the archive's first 80,000 bytes
    metrics = download.fetch(cfg_for([url]), out, FAST)
    assert_extracted(out)
    assert metrics["archive_sha1"] == ORIGINAL_SHA1
    first, second = http_server.hits_for("w.zip")
    assert first.headers["range"] == "bytes=80000-"
    assert "range" not in second.headers  # the stitched archive failed: from the start
    assert not partial.parent.exists()


def test_a_partial_download_that_is_complete_is_used_as_it_is(http_server, tmp_path):
    url = serve(http_server, "w.zip", ORIGINAL)
    out = tmp_path / "out"
    partial = partial_of(out, url)
    partial.parent.mkdir()
    partial.write_bytes(ORIGINAL)  # a run killed after the last byte, before extracting
    download.fetch(cfg_for([url]), out, FAST)
    assert_extracted(out)
    (hit,) = http_server.hits_for("w.zip")  # answered 416: nothing more to send
    assert hit.headers["range"] == f"bytes={len(ORIGINAL)}-"


def test_leftovers_of_killed_runs_are_removed_by_the_next_run(http_server, tmp_path):
    url = serve(http_server, "w.zip", ORIGINAL)
    data = tmp_path / "data"
    out = data / "out"
    staging = data / ".out.ab_d1234.tmp"  # artifacts.atomic_dir's temporary folder
    staging.mkdir(parents=True)
    (staging / "archive.zip").write_bytes(b"half")
    (data / ".out.zz99zz99.tmp").write_bytes(b"half")  # a temporary file
    stale = partial_of(out, "https://no-longer-listed.example/w.zip")
    stale.parent.mkdir()
    stale.write_bytes(b"half")
    others = [data / ".other.ab_d1234.tmp", data / "out.ab_d1234.tmp", data / ".out.notes"]
    for path in others:
        path.write_bytes(b"not ours")

    http_server.cut("w.zip", after=150_000)
    with pytest.raises(UserError):
        download.fetch(cfg_for([url]), out, HttpPolicy(attempts=1))
    # The listed mirror's partial download stays; everything else of ours is gone.
    partial = partial_of(out, url)
    assert list(partial.parent.iterdir()) == [partial]
    assert sorted(data.iterdir()) == sorted([partial.parent, *others])

    download.fetch(cfg_for([url]), out, FAST)
    assert sorted(data.iterdir()) == sorted([out, *others])


@pytest.mark.parametrize("form", ["file_url", "plain_path"])
def test_local_copy_mirrors(tmp_path, form):
    copy = tmp_path / "copies" / "wikitext-2-v1.zip"
    copy.parent.mkdir()
    copy.write_bytes(ORIGINAL)
    mirror = copy.as_uri() if form == "file_url" else str(copy)
    metrics = download.fetch(cfg_for([mirror]), tmp_path / "out", FAST)
    assert metrics["mirror"] == mirror
    assert_extracted(tmp_path / "out")
    assert copy.read_bytes() == ORIGINAL  # the user's copy is read in place, never moved


@pytest.mark.parametrize(
    ("members", "reason"),
    [
        (
            {k: v for k, v in CONTENT.items() if k != "wiki.test.tokens"},
            "no member named 'wiki.test.tokens'",
        ),
        (
            {**CONTENT, "copy/wiki.test.tokens": CONTENT["wiki.test.tokens"]},
            "2 members named 'wiki.test.tokens'",
        ),
        (
            {**CONTENT, "../wiki.train.tokens": b"escape"},
            "unsafe member name '../wiki.train.tokens'",
        ),
        ({**CONTENT, "/etc/evil": b"escape"}, "unsafe member name '/etc/evil'"),
    ],
)
def test_archive_with_missing_duplicate_or_unsafe_members_fails(tmp_path, members, reason):
    archive = tmp_path / "w.zip"
    archive.write_bytes(make_zip(members))
    # The archive SHA-1 matches, so only the member checks can reject it.
    with pytest.raises(UserError, match=reason):
        download.fetch(
            cfg_for([str(archive)], sha1(archive.read_bytes())), tmp_path / "d/out", FAST
        )
    assert list(tmp_path.rglob("*.tokens")) == []  # nothing extracted, inside `d` or beside it


def deflated_zip(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buffer.getvalue()


def declare_size(archive: bytes, name: str, size: int) -> bytes:
    """`archive` with the uncompressed size of member `name` changed to `size` in both its
    central directory entry (what zipfile reads) and its local header."""
    out = bytearray(archive)
    entry = out.find(b"PK\x01\x02")
    while out[entry + 46 : entry + 46 + struct.unpack_from("<H", out, entry + 28)[0]] != (
        name.encode()
    ):
        entry = out.find(b"PK\x01\x02", entry + 4)
    struct.pack_into("<I", out, entry + 24, size)
    local = struct.unpack_from("<I", out, entry + 42)[0]
    struct.pack_into("<I", out, local + 22, size)
    return bytes(out)


SMALL_FILES = {k: v for k, v in CONTENT.items() if k != "wiki.train.tokens"}


def test_zip_bomb_is_refused_before_anything_is_extracted(tmp_path):
    bomb = deflated_zip({"wiki.train.tokens": bytes(20_000_000), **SMALL_FILES})  # ~20 kB
    archive = tmp_path / "bomb.zip"
    archive.write_bytes(bomb)
    declared = 20_000_000 + sum(map(len, SMALL_FILES.values()))
    # The archive SHA-1 matches, so only the limits can reject it.
    message = rf"refused before extracting: .* {declared:,} bytes, [\d,]+ times the archive's"
    with pytest.raises(UserError, match=message):
        download.fetch(cfg_for([str(archive)], sha1(bomb)), tmp_path / "out", FAST)
    staging = tmp_path / "staging"
    staging.mkdir()
    with pytest.raises(archives.ArchiveError, match="refused before extracting"):
        archives.extract(archive, cfg_for([]).files, staging, archives.DEFAULT_LIMITS)
    assert list(staging.iterdir()) == []  # not one byte written


def test_archive_unpacking_past_the_absolute_limit_is_refused(tmp_path):
    archive = tmp_path / "w.zip"
    archive.write_bytes(ORIGINAL)  # stored: it unpacks to about its own size
    limits = ArchiveLimits(max_bytes=100_000)
    with pytest.raises(UserError, match=r"more than the limit of 100,000 bytes"):
        download.fetch(cfg_for([str(archive)]), tmp_path / "out", FAST, limits)
    assert not (tmp_path / "out").exists()


def test_member_longer_than_its_header_declares_is_cut_there_and_rejected(tmp_path):
    honest = deflated_zip({"wiki.train.tokens": bytes(1_000_000), **SMALL_FILES})
    lying = declare_size(honest, "wiki.train.tokens", 1000)
    assert zipfile.ZipFile(io.BytesIO(lying)).getinfo("wiki.train.tokens").file_size == 1000
    archive = tmp_path / "lying.zip"
    archive.write_bytes(lying)
    with pytest.raises(UserError, match=r"member 'wiki.train.tokens' does not match its header"):
        download.fetch(cfg_for([str(archive)], sha1(lying)), tmp_path / "out", FAST)
    staging = tmp_path / "staging"
    staging.mkdir()
    with pytest.raises(archives.ArchiveError, match="does not match its header"):
        archives.extract(archive, cfg_for([]).files, staging, archives.DEFAULT_LIMITS)
    assert (staging / "wiki.train.tokens").stat().st_size <= 1000


def damage_deflate_stream(archive: bytes, name: str) -> bytes:
    """`archive` with the deflate data of member `name` starting with a block of the type that
    deflate reserves: headers, sizes and CRC-32 untouched, so zipfile starts decompressing."""
    info = zipfile.ZipFile(io.BytesIO(archive)).getinfo(name)
    name_len, extra_len = struct.unpack_from("<HH", archive, info.header_offset + 26)
    start = info.header_offset + 30 + name_len + extra_len
    out = bytearray(archive)
    out[start] = 0b111  # BFINAL 1, BTYPE 11 (reserved), read from the low bits up
    return bytes(out)


def test_a_damaged_deflate_stream_fails_its_mirror_in_one_line_and_the_next_is_tried(
    tmp_path, caplog
):
    damaged = tmp_path / "damaged.zip"
    damaged.write_bytes(damage_deflate_stream(deflated_zip(CONTENT), "wiki.train.tokens"))
    good = tmp_path / "good.zip"
    good.write_bytes(ORIGINAL)
    # Every member has a SHA-1, so the damaged copy gets past the archive's SHA-1 to extraction.
    cfg = cfg_for([str(damaged), str(good)], member_sha1s=True)
    metrics = download.fetch(cfg, tmp_path / "out", FAST)
    assert metrics["mirror"] == str(good)
    assert_extracted(tmp_path / "out")
    (failed,) = [r.getMessage() for r in caplog.records if "failed" in r.getMessage()]
    assert failed.startswith(f"mirror {damaged} failed: member 'wiki.train.tokens' is damaged")
    assert "invalid block type" in failed and "\n" not in failed


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"mirrors": ()}, "mirrors: empty"),
        ({"files": {"wikitext-2/wiki.train.tokens": None}}, "not a plain file name"),
        ({"sha1": None}, "nothing to check the archive against"),
        ({"sha1": "3c914d17"}, "not a SHA-1"),
    ],
)
def test_unusable_params_fail_before_any_request(http_server, tmp_path, change, reason):
    cfg = cfg_for([serve(http_server, "w.zip", ORIGINAL)])
    cfg = DownloadConfig(**{**cfg.__dict__, **change})
    with pytest.raises(UserError, match=reason):
        download.fetch(cfg, tmp_path / "out", FAST)
    assert http_server.hits == []


@pytest.mark.parametrize(
    ("name", "top"), [("download_wikitext", "wikitext-2"), ("download_snli", "snli_1.0")]
)
def test_stage_script_end_to_end(http_server, tmp_path, stage, name, top):
    archive = make_zip({f"{top}/{name}": data for name, data in CONTENT.items()})
    mirrors = [http_server.url("dead.zip"), serve(http_server, "a.zip", archive)]
    section = {"mirrors": mirrors, "sha1": sha1(archive), "files": dict.fromkeys(CONTENT)}
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({name: section}), encoding="utf-8")
    out, metrics = tmp_path / "data" / name, tmp_path / "metrics" / f"{name}.json"
    argv = ["--name", name, "--params", str(params), "--out", str(out), "--metrics", str(metrics)]
    stage("download").main(argv)
    assert_extracted(out)
    assert json.loads(metrics.read_text(encoding="utf-8")) == {
        "mirror": mirrors[1],
        "archive_bytes": len(archive),
        "archive_sha1": sha1(archive),
        "files": {name: len(data) for name, data in CONTENT.items()},
    }


def test_the_stage_script_runs_download_stages_only(stage, tmp_path):
    argv = ["--name", "pretrain", "--out", str(tmp_path / "o"), "--metrics", str(tmp_path / "m")]
    with pytest.raises(SystemExit):  # argparse: --name must be a download section
        stage("download").main(argv)
    assert list(tmp_path.iterdir()) == []
