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
A cut before 64 KiB (bertpipe.transfer.CHUNK) leaves nothing to resume from: cut later than that
to see a Range request. A hanging or throttled reply gives up after MISBEHAVE_S seconds (or when
the server stops), so a client that would wait for ever fails its test instead of hanging the run.

`stage`: loads a stage script (`stages/<name>.py`) as a module, to call its `main(argv)`.

`fake`: writers of small, learnable stage outputs in the real formats (make_examples and
make_snli folders, a BERT checkpoint) and a reader of DVCLive curves; see `Fakes`.

`training_params` (imported by the training tests): the model and training sections of
params.yaml for the tiny model, with the README's training controls on.
"""

from __future__ import annotations

import csv
import importlib.util
import os
import re
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType, SimpleNamespace

import numpy as np
import pytest
import torch

from bertpipe import artifacts, checkpoints, config, wikitext
from bertpipe.model import BERTModel
from bertpipe.vocab import SPECIALS, Vocab

REPO = Path(__file__).resolve().parents[1]

# No test may reach the Hugging Face Hub: huggingface_hub and transformers read this when
# imported, which no test module does before this file runs. The hf_bert stage's Hub tests run
# it in processes of their own, pointed at a loopback imitation of the Hub.
os.environ["HF_HUB_OFFLINE"] = "1"


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


@pytest.fixture(scope="session")
def stage() -> Callable[[str], ModuleType]:
    """`stage("pretrain")` is stages/pretrain.py as a module (loaded once per session)."""
    loaded: dict[str, ModuleType] = {}

    def load(name: str) -> ModuleType:
        if name not in loaded:
            path = REPO / "stages" / f"{name}.py"
            spec = importlib.util.spec_from_file_location(f"stage_{name}", path)
            loaded[name] = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(loaded[name])
        return loaded[name]

    return load


# ----------------------------------------------------------------------------------------------
# Small stage outputs in the real formats


VOCAB = 37  # 5 special ids, then 32 content ids
CONTENT = np.arange(5, VOCAB)
TOKENS = Vocab([*SPECIALS, *(f"w{i}" for i in CONTENT)])
SHA = TOKENS.sha1  # of the vocab.json that `write_vocab` writes
LABELS = ["entailment", "contradiction", "neutral"]
TINY = config.ModelConfig(
    num_hiddens=24, ffn_num_hiddens=48, num_heads=2, num_blks=2, dropout=0.0, max_position=40
)


def _run(start: int, n: int) -> list[int]:
    """n consecutive content ids from `start` (wrapping): each is predictable from a neighbour."""
    return [int(CONTENT[(start + i) % len(CONTENT)]) for i in range(n)]


def write_examples(folder: Path, n: int = 384, max_len: int = 20, seed: int = 0,
                   held_out: int = 64) -> Path:  # fmt: skip
    """A learnable make_examples folder: MLM from neighbours, NSP from continuity; its `valid/`
    holds `held_out` more examples of the same kind, drawn apart."""
    save_examples(folder, example_arrays(n, max_len, np.random.default_rng(seed)))
    save_examples(folder / "valid", example_arrays(held_out, max_len,
                                                   np.random.default_rng([seed, 1])))  # fmt: skip
    return folder


def example_arrays(n: int, max_len: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """n examples of the fakes' kind, as make_examples' arrays."""
    P = round(0.15 * max_len)
    arrays = {
        "token_ids": np.full((n, max_len), 1, np.uint16),
        "segments": np.zeros((n, max_len), np.uint8),
        "valid_lens": np.zeros(n, np.int16),
        "pred_positions": np.zeros((n, P), np.int16),
        "mlm_labels": np.zeros((n, P), np.uint16),
        "mlm_weights": np.zeros((n, P), np.uint8),
        "nsp_labels": rng.integers(0, 2, n).astype(np.uint8),
    }
    for i in range(n):
        la, lb = rng.integers(2, 8, size=2)
        start = int(rng.integers(len(CONTENT)))
        b_start = start + la if arrays["nsp_labels"][i] else start + la + int(rng.integers(4, 28))
        tokens = [3, *_run(start, la), 4, *_run(b_start, lb), 4]
        L = len(tokens)
        candidates = [j for j in range(1, L) if tokens[j] != 4]
        k = max(1, min(P, round(0.15 * L)))
        chosen = np.sort(rng.choice(candidates, size=k, replace=False))
        arrays["mlm_labels"][i, :k] = [tokens[j] for j in chosen]
        arrays["pred_positions"][i, :k] = chosen
        arrays["mlm_weights"][i, :k] = 1
        for j in chosen:
            tokens[j] = 2  # <mask>
        arrays["token_ids"][i, :L] = tokens
        arrays["segments"][i, la + 2 : L] = 1
        arrays["valid_lens"][i] = L
    return arrays


def save_examples(folder: Path, arrays: dict[str, np.ndarray]) -> Path:
    """`arrays` as a make_examples folder of the fakes' vocabulary."""
    n, max_len = arrays["token_ids"].shape
    folder.mkdir(parents=True)
    meta = {
        "num_examples": n, "max_len": max_len, "max_num_mlm_preds": arrays["mlm_labels"].shape[1],
        "vocab_size": VOCAB, "vocab_sha1": SHA, "pad_id": 1, "mask_id": 2, "cls_id": 3,
        "sep_id": 4, "id_dtype": "uint16",
    }  # fmt: skip
    artifacts.EXAMPLES.save(folder, arrays, meta)
    return folder


def write_corpus(folder: Path, sentences: int = 60) -> Path:
    """A tokenize_wikitext folder of the fakes' vocabulary: runs of content ids, 3 sentences to a
    paragraph (pretrain counts its tokens for the unigram reference)."""
    rng = np.random.default_rng(2)
    starts, lens = rng.integers(len(CONTENT), size=sentences), rng.integers(2, 8, size=sentences)
    runs = [_run(int(start), int(n)) for start, n in zip(starts, lens, strict=True)]
    corpus = wikitext.Corpus(
        token_ids=np.concatenate(runs).astype(np.uint16),
        sentence_offsets=np.cumsum([0, *map(len, runs)]),
        paragraph_offsets=np.arange(0, sentences + 1, 3),
        vocab_size=VOCAB,
        vocab_sha1=SHA,
    )
    wikitext.save(folder, corpus, TOKENS)
    return folder


def write_vocab(path: Path) -> Path:
    """The vocabulary of these fakes: the five specials, then w5 ... w36."""
    TOKENS.save(path)
    return path


def snli_arrays(pairs: list[tuple[list[int], list[int]]], labels: np.ndarray) -> dict:
    """make_snli's arrays for (premise ids, hypothesis ids) pairs: `<cls> p <sep> h <sep>`."""
    ids, offsets, starts = [], [0], []
    for p, h in pairs:
        ids += [3, *p, 4, *h, 4]
        offsets.append(len(ids))
        starts.append(len(p) + 2)
    return {
        "token_ids": np.asarray(ids, np.uint16),
        "offsets": np.asarray(offsets, np.int64),
        "segment_starts": np.asarray(starts, np.int16),
        "labels": labels,
    }


def write_snli(folder: Path, sizes: dict[str, int], max_len: int = 24, sha: str = SHA) -> Path:
    """A learnable make_snli folder: the label is which of three marker ids opens the hypothesis."""
    rng = np.random.default_rng(1)
    for split, n in sizes.items():
        labels = rng.integers(0, 3, n).astype(np.uint8)
        pairs = [
            (
                rng.choice(CONTENT[3:], size=int(rng.integers(2, 9))).tolist(),
                [5 + int(label), *rng.choice(CONTENT[3:], size=int(rng.integers(1, 6)))],
            )
            for label in labels
        ]
        arrays = snli_arrays(pairs, labels)
        (folder / split).mkdir(parents=True)
        counts = {name: int((labels == k).sum()) for k, name in enumerate(LABELS)}
        artifacts.SNLI_SPLIT.save(folder / split, arrays, {
            "num_pairs": n, "dropped_no_label": 0, "dropped_unknown_label": 0, "blank_lines": 0,
            "truncated": 0, "label_counts": counts,
            "max_valid_len": int(np.diff(arrays["offsets"]).max()),
        }, ids="uint16")  # fmt: skip
    artifacts.SNLI.save(folder, {}, {
        "vocab_size": VOCAB, "vocab_sha1": sha, "max_len": max_len, "splits": list(sizes),
        "labels": LABELS, "id_dtype": "uint16", "unk_id": 0, "pad_id": 1, "mask_id": 2,
        "cls_id": 3, "sep_id": 4,
    })  # fmt: skip
    return folder


def write_bert(path: Path, cfg: config.ModelConfig = TINY, sha: str = SHA) -> Path:
    """A freshly initialised BERT checkpoint, as the pretrain stage would write it."""
    torch.manual_seed(0)
    model = BERTModel(VOCAB, cfg)
    artifacts.save_checkpoint(path, model.state_dict(), checkpoints.bert_meta(cfg, VOCAB, sha))
    return path


# The README's training controls: warm-up, linear decay, AdamW's weight decay and clipping.
CONTROLS = {"warmup_fraction": 0.1, "lr_schedule": "linear", "weight_decay": 0.01,
            "grad_clip": 1.0}  # fmt: skip


def training_params(pretrain_steps: int, finetune_epochs: int, dropout: float = 0.1,
                    precision: str = "fp32") -> dict:  # fmt: skip
    """params.yaml's model and training sections for the tiny model, controls on."""
    return {
        "model": {"num_hiddens": 24, "ffn_num_hiddens": 48, "num_heads": 2, "num_blks": 2,
                  "dropout": dropout, "max_position": 40},
        "pretrain": {"batch_size": 64, "lr": 0.01, "num_steps": pretrain_steps, "seed": 0,
                     "eval_every": 5, "masking": "static", "precision": precision, **CONTROLS},
        "finetune": {"batch_size": 32, "lr": 3.0e-3, "num_epochs": finetune_epochs, "seed": 0,
                     "pretrained": "pretrain", "precision": precision, **CONTROLS},
    }  # fmt: skip


def read_curve(live: Path, name: str) -> np.ndarray:
    """(steps, value) rows of a DVCLive TSV."""
    with open(live / "plots" / "metrics" / f"{name}.tsv", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    key = name.rsplit("/", 1)[-1]
    return np.array([[float(r["step"]), float(r[key])] for r in rows])


@pytest.fixture(scope="session")
def fake() -> SimpleNamespace:
    """The writers above, with the constants they use (vocabulary of 37, a tiny model)."""
    return SimpleNamespace(
        VOCAB=VOCAB, SHA=SHA, LABELS=LABELS, TINY=TINY, examples=write_examples, vocab=write_vocab,
        corpus=write_corpus, snli_arrays=snli_arrays, snli=write_snli, bert=write_bert,
        curve=read_curve,
    )  # fmt: skip


@pytest.fixture
def busy_core() -> Iterator[int]:
    """This process on two cores, a busy process on one of them; yields that core.

    Skips where there are not two cores, or no /proc/stat (runtime.Threads cannot see load).
    """
    if not hasattr(os, "sched_setaffinity") or not Path("/proc/stat").exists():
        pytest.skip("needs Linux's CPU affinity and /proc/stat")
    before = os.sched_getaffinity(0)
    if len(before) < 2:
        pytest.skip("needs two cores")
    cores = sorted(before)[:2]
    os.sched_setaffinity(0, cores)
    spin = f"import os; os.sched_setaffinity(0, {{{cores[1]}}})\nwhile True: pass"
    busy = subprocess.Popen([sys.executable, "-c", spin])
    time.sleep(0.5)  # under way
    try:
        yield cores[1]
    finally:
        busy.kill()
        busy.wait()
        os.sched_setaffinity(0, before)


@pytest.fixture(scope="session")
def tiny_hf_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Hub-layout tiny BERT folder (`hf_tiny.write_tiny_bert`), built once per session.

    Imported here, not at the top: only the hf_bert route's tests pay for `transformers`.
    """
    from hf_tiny import write_tiny_bert

    return write_tiny_bert(tmp_path_factory.mktemp("hf") / "tiny")
