"""The hf_bert route's data side: the hf_bert stage fills data/hf_bert/<name>/ from a local folder
(checked by its digest) or from a Hub imitated on loopback HTTP (files checked against the Hub's
hashes, the commit recorded), refusing pickled weights and foreign models in one line; make_snli
encodes SNLI with the model's own tokenizer, id for id what the tokenizer returns."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import yaml
from safetensors.numpy import save

from bertpipe import artifacts, hf_bert, snli, synthetic
from bertpipe.errors import UserError

REPO = Path(__file__).resolve().parents[1]


def write_params(tmp_path: Path, entries: dict, max_len: int = 24) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({"hf_bert": entries, "make_snli": {"max_len": max_len}}))
    return path


def local_entry(folder: Path, sha256: str | None) -> dict:
    return {"source": str(folder), "revision": None, "sha256": sha256}


def digest_of(folder: Path) -> str:
    """What `cd folder && sha256sum <files> | sha256sum` prints, the way README tells it."""
    names = sorted(p.name for p in folder.iterdir() if p.name in hf_bert.FILES)
    listing = "".join(f"{hashlib.sha256((folder / n).read_bytes()).hexdigest()}  {n}\n"
                      for n in names)  # fmt: skip
    return hashlib.sha256(listing.encode()).hexdigest()


def run_stage(stage, params: Path, name: str, out: Path, metrics: Path) -> None:
    stage("hf_bert").main(
        ["--params", str(params), "--name", name, "--out", str(out), "--metrics", str(metrics)]
    )


# ----------------------------------------------------------------------------------------------
# A local folder


def test_a_local_folder_is_copied_once_its_digest_is_given(tmp_path, tiny_hf_bert, stage):
    out, metrics = tmp_path / "data" / "tiny", tmp_path / "tiny.json"
    params = write_params(tmp_path, {"tiny": local_entry(tiny_hf_bert, None)})
    digest = digest_of(tiny_hf_bert)
    with pytest.raises(UserError, match=rf"hf_bert\.tiny\.sha256 is null, but .* digest {digest}"):
        run_stage(stage, params, "tiny", out, metrics)
    assert not out.parent.exists()  # nothing half-written, not even the folder above

    params = write_params(tmp_path, {"tiny": local_entry(tiny_hf_bert, digest)})
    run_stage(stage, params, "tiny", out, metrics)
    names = sorted(p.name for p in tiny_hf_bert.iterdir())
    assert sorted(p.name for p in out.iterdir()) == names
    for name in names:
        assert (out / name).read_bytes() == (tiny_hf_bert / name).read_bytes()
    m = artifacts.read_json(metrics)
    assert m["commit"] is None and m["sha256"] == digest
    assert m["tokenizer_sha1"] == hf_bert.tokenizer_sha1(out)
    assert (
        m["files"]["model.safetensors"]["sha256"]
        == hashlib.sha256((out / "model.safetensors").read_bytes()).hexdigest()
    )
    # what transformers itself loads from the folder alone, offline
    from transformers import BertForPreTraining, BertTokenizer

    model = BertForPreTraining.from_pretrained(str(out), local_files_only=True)
    tokenizer = BertTokenizer.from_pretrained(str(out), local_files_only=True)
    assert m["model"]["hidden_size"] == model.config.hidden_size
    assert m["vocab_size"] == len(tokenizer)
    assert m["special_ids"]["cls_id"] == tokenizer.cls_token_id


def test_a_changed_folder_is_refused_and_the_previous_output_stays(tmp_path, tiny_hf_bert, stage):
    folder = tmp_path / "mine"
    shutil.copytree(tiny_hf_bert, folder)
    out, metrics = tmp_path / "data" / "mine", tmp_path / "mine.json"
    params = write_params(tmp_path, {"mine": local_entry(folder, digest_of(folder))})
    run_stage(stage, params, "mine", out, metrics)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "hidden_dropout_prob": 0.0}))
    with pytest.raises(UserError, match=rf"digest {digest_of(folder)}: set that"):
        run_stage(stage, params, "mine", out, metrics)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in out.parent.iterdir()) == ["mine"]  # no temporary leftovers


def test_googles_layout_gets_a_tokenizer_json_that_encodes_alike(tmp_path, tiny_hf_bert, stage):
    """Google's repositories ship vocab.txt and no tokenizer.json: the stage builds one."""
    from transformers import BertTokenizer

    original = BertTokenizer.from_pretrained(str(tiny_hf_bert), local_files_only=True)
    folder = tmp_path / "google"
    folder.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copyfile(tiny_hf_bert / name, folder / name)
    by_id = sorted(original.get_vocab().items(), key=lambda item: item[1])
    (folder / "vocab.txt").write_text("".join(f"{token}\n" for token, _ in by_id))
    out = tmp_path / "data" / "google"
    params = write_params(tmp_path, {"google": local_entry(folder, digest_of(folder))})
    run_stage(stage, params, "google", out, tmp_path / "google.json")
    assert (out / "tokenizer.json").is_file()
    built = hf_bert.load_tokenizer(out)
    rows = synthetic.snli_rows(40, seed=3)[1:]
    for row in rows:
        assert built(row[5], row[6])["input_ids"] == original(row[5], row[6])["input_ids"]


def vocab_txt(folder: Path, drop: tuple[str, ...] = ()) -> str:
    """The WordPiece list of `folder`'s tokenizer, as Google's vocab.txt holds it, less `drop`."""
    from transformers import BertTokenizer

    tokenizer = BertTokenizer.from_pretrained(str(folder), local_files_only=True)
    by_id = sorted(tokenizer.get_vocab().items(), key=lambda item: item[1])
    return "".join(f"{token}\n" for token, _ in by_id if token not in drop)


BROKEN_TOKENIZER = r"hf_bert\.bad: .*/bad: transformers cannot load its BERT tokenizer \("


@pytest.mark.parametrize(
    ("change", "complaint"),
    [
        ("pickle_only", r"no model\.safetensors; only pickled weights \(pytorch_model\.bin\)"),
        ("sharded", r"weights in shards \(model\.safetensors\.index\.json\), which this"),
        ("no_tokenizer", r"no tokenizer\.json nor vocab\.txt: no tokenizer"),
        ("roberta", r"config\.json has model_type 'roberta'; the hf_bert route takes BERTs only"),
        ("not_safetensors", r"model\.safetensors is not a safetensors file"),
        ("broken_tokenizer_json", BROKEN_TOKENIZER + "KeyError: "),
        ("vocab_not_utf8", BROKEN_TOKENIZER + "Exception: Error while initializing WordPiece"),
        ("broken_tokenizer_config", BROKEN_TOKENIZER + "JSONDecodeError: "),
        ("vocab_without_cls", r"vocabulary has no mask_token \[MASK\], cls_token \[CLS\]; a"),
    ],
)
def test_what_is_not_a_bert_in_safetensors_is_refused(tmp_path, tiny_hf_bert, stage, change,
                                                      complaint):  # fmt: skip
    """In one line that names the source (not the stage's temporary folder), leaving nothing."""
    folder = tmp_path / "bad"
    shutil.copytree(tiny_hf_bert, folder)
    if change.startswith(("vocab_", "broken_tokenizer_config")):  # Google's layout: vocab.txt
        vocab = vocab_txt(folder, drop=("[CLS]", "[MASK]") if change == "vocab_without_cls" else ())
        (folder / "tokenizer.json").unlink()
        (folder / "vocab.txt").write_text(vocab)
    if change == "pickle_only":
        (folder / "model.safetensors").rename(folder / "pytorch_model.bin")
    elif change == "sharded":
        (folder / "model.safetensors").rename(folder / "model-00001-of-00001.safetensors")
        (folder / "model.safetensors.index.json").write_text('{"weight_map": {}}')
    elif change == "no_tokenizer":
        (folder / "tokenizer.json").unlink()
    elif change == "roberta":
        config = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps({**config, "model_type": "roberta"}))
    elif change == "not_safetensors":
        (folder / "model.safetensors").write_bytes(b"\x80\x04not a safetensors header")
    elif change == "broken_tokenizer_json":
        (folder / "tokenizer.json").write_text('{"model": {"type": "WordPiece"}}')
    elif change == "vocab_not_utf8":
        (folder / "vocab.txt").write_bytes(vocab.encode() + "caf\xe9\n".encode("latin-1"))
    elif change == "broken_tokenizer_config":
        (folder / "tokenizer_config.json").write_text("{not json")
    out = tmp_path / "data" / "bad"
    params = write_params(tmp_path, {"bad": local_entry(folder, digest_of(folder))})
    with pytest.raises(UserError, match=complaint) as info:
        run_stage(stage, params, "bad", out, tmp_path / "bad.json")
    assert "\n" not in str(info.value) and ".tmp" not in str(info.value)
    assert not (tmp_path / "data").exists() and not (tmp_path / "bad.json").exists()


@pytest.mark.parametrize("source", ["a/b/c", "bert base uncased", "the tiny folder"])
def test_a_source_that_is_no_hub_id_is_refused_in_one_line(tmp_path, tiny_hf_bert, stage, source):
    """revision: main on a local folder is the likely slip; huggingface_hub refuses such an id
    before asking the Hub anything."""
    local = source == "the tiny folder"
    source = str(tiny_hf_bert) if local else source
    params = write_params(tmp_path, {"x": {"source": source, "revision": "main", "sha256": None}})
    complaint = (
        rf"hf_bert\.x: {re.escape(source)} is a local folder, which takes revision: null"
        if local
        else rf"hf_bert\.x\.source: '{source}' is not a Hub id \(.*\); a Hub id is <name> or"
    )
    with pytest.raises(UserError, match=complaint) as info:
        run_stage(stage, params, "x", tmp_path / "data" / "x", tmp_path / "x.json")
    assert "\n" not in str(info.value) and not (tmp_path / "data").exists()


# ----------------------------------------------------------------------------------------------
# SNLI in the model's own tokens


def write_tables(folder: Path, num_pairs: int) -> Path:
    folder.mkdir(parents=True)
    for split, n, seed in (("train", num_pairs, 0), ("test", num_pairs // 4, 1)):
        rows = synthetic.snli_rows(n, seed)
        (folder / f"snli_1.0_{split}.txt").write_text("".join("\t".join(r) + "\n" for r in rows))
    return folder


@pytest.mark.parametrize("max_len", [12, 22])
def test_make_snli_ids_are_the_tokenizers_on_every_pair(tmp_path, tiny_hf_bert, stage, max_len):
    """The tiny tokenizer makes pairs of 19 to 25 ids: at 12 every pair is cut (longest-first,
    often both sides), at 22 some are: id for id as the tokenizer does it."""
    tables = write_tables(tmp_path / "download_snli", 300)
    params = write_params(tmp_path, {}, max_len=max_len)
    tokenizer = hf_bert.load_tokenizer(tiny_hf_bert)
    outs = {}
    for workers in (1, 2):
        outs[workers] = tmp_path / f"make_snli_{workers}"
        stage("make_snli").main(
            ["--params", str(params), "--tables", str(tables), "--pretrained", str(tiny_hf_bert),
             "--out", str(outs[workers]), "--metrics", str(tmp_path / "m.json"),
             f"--workers={workers}"]
        )  # fmt: skip
    meta = artifacts.read_json(outs[1] / "meta.json")
    assert meta["vocab_sha1"] == hf_bert.tokenizer_sha1(tiny_hf_bert)
    assert meta["vocab_size"] == len(tokenizer) and meta["cls_id"] == tokenizer.cls_token_id
    truncated = kept = 0
    for split in ("train", "test"):
        arrays, split_meta = artifacts.SNLI_SPLIT.load(outs[1] / split, meta["id_dtype"])
        pairs = snli.read_snli(tables / f"snli_1.0_{split}.txt", raw=True)
        assert len(arrays["labels"]) == len(pairs.labels) == split_meta["num_pairs"]
        for i, (premise, hypothesis) in enumerate(
            zip(pairs.premises, pairs.hypotheses, strict=True)
        ):
            want = tokenizer(premise, hypothesis, truncation="longest_first", max_length=max_len)
            ids = arrays["token_ids"][arrays["offsets"][i] : arrays["offsets"][i + 1]].tolist()
            start = int(arrays["segment_starts"][i])
            assert ids == want["input_ids"]
            assert [0] * start + [1] * (len(ids) - start) == want["token_type_ids"]
            truncated += len(tokenizer(premise, hypothesis)["input_ids"]) > max_len
            kept += 1
        assert split_meta["truncated"] == sum(  # counted as the tokenizer cut them
            len(tokenizer(p, h)["input_ids"]) > max_len
            for p, h in zip(pairs.premises, pairs.hypotheses, strict=True)
        )
        for name in ("token_ids", "offsets", "segment_starts", "labels"):  # workers change no bit
            one, two = (np.load(o / split / f"{name}.npy") for o in (outs[1], outs[2]))
            assert one.tobytes() == two.tobytes()
    assert 0 < truncated <= kept and (max_len == 12) == (truncated == kept)


def test_longest_first_lengths_are_the_tokenizers_cut_everywhere(tiny_hf_bert):
    """Every pair of lengths 0-14 at every max_len 3-11: sides of one-token words, cut by the
    tokenizer itself and by the closed form make_snli uses."""
    backend = hf_bert.load_tokenizer(tiny_hf_bert).backend_tokenizer
    assert len(backend.encode("the", add_special_tokens=False).ids) == 1
    for max_len in range(3, 12):
        backend.enable_truncation(max_len, strategy="longest_first")
        grid = np.array([(p, h) for p in range(15) for h in range(15)])
        cut = [backend.encode(" ".join(["the"] * p), " ".join(["the"] * h)) for p, h in grid]
        keep_p = np.array([e.type_ids.count(0) - 2 for e in cut])
        keep_h = np.array([len(e.ids) - 3 for e in cut]) - keep_p
        want_p, want_h = snli.longest_first_lengths(grid[:, 0], grid[:, 1], max_len - 3)
        assert keep_p.tolist() == want_p.tolist() and keep_h.tolist() == want_h.tolist()


AWKWARD = [
    ('Café  au lait,\tnaïve cooks\' "bread".', "  A man\u00a0sleeps  "),
    ("He said [SEP] twice", "日本語 text and e\u0301cole"),
    ("x\x00y \x1c z", ""),
    ("", "a"),
    ("ﬁve ＡＢＣ – ok...", "Ünïcödé ÅNGSTRÖM"),
]


@pytest.mark.parametrize("lowercase", [True, False])
def test_awkward_text_gets_the_tokenizers_ids(tiny_hf_bert, lowercase):
    """Accents, combining marks, CJK, control characters, no-break and repeated spaces, a
    literal [SEP], empty sentences: cased and uncased, as the tokenizer encodes them."""
    from tokenizers import normalizers

    tokenizer = hf_bert.load_tokenizer(tiny_hf_bert)
    tokenizer.backend_tokenizer.normalizer = normalizers.BertNormalizer(lowercase=lowercase)
    for max_len in (8, 64):
        encoder = snli.TokenizerPairEncoder.of(tokenizer, max_len)
        encoded = encoder.encode([p for p, _ in AWKWARD], [h for _, h in AWKWARD])
        for i, (premise, hypothesis) in enumerate(AWKWARD):
            want = tokenizer(premise, hypothesis, truncation="longest_first", max_length=max_len)
            ids = encoded.token_ids[encoded.offsets[i] : encoded.offsets[i + 1]].tolist()
            assert ids == want["input_ids"]
            assert want["token_type_ids"].count(0) == encoded.segment_starts[i]


def test_a_tokenizer_that_could_join_words_across_a_space_is_refused(tiny_hf_bert):
    from tokenizers import pre_tokenizers

    tokenizer = hf_bert.load_tokenizer(tiny_hf_bert)
    tokenizer.backend_tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    with pytest.raises(UserError, match=r"pre-tokenizer Metaspace: make_snli encodes SNLI with"):
        snli.TokenizerPairEncoder.of(tokenizer, 32)


def test_a_tokenizer_without_berts_pair_template_is_refused(tiny_hf_bert):
    from tokenizers import processors

    tokenizer = hf_bert.load_tokenizer(tiny_hf_bert)
    assert snli.TokenizerPairEncoder.of(tokenizer, 32).cls_id == tokenizer.cls_token_id
    cls = ("[CLS]", tokenizer.cls_token_id)
    tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A", pair="[CLS] $A $B:1", special_tokens=[cls]
    )  # no [SEP]s
    with pytest.raises(UserError, match=r"encodes a pair as \['\[CLS\]', .*not as BERT's"):
        snli.TokenizerPairEncoder.of(tokenizer, 32)


def test_the_raw_sentences_keep_their_case_and_punctuation(tmp_path):
    tables = write_tables(tmp_path / "t", 8)
    raw = snli.read_snli(tables / "snli_1.0_train.txt", raw=True)
    cleaned = snli.read_snli(tables / "snli_1.0_train.txt")
    rows = [r for r in synthetic.snli_rows(8, 0)[1:] if r[0] in snli.LABELS]
    assert raw.premises == [r[5] for r in rows] and raw.hypotheses == [r[6] for r in rows]
    assert cleaned.premises == [snli.clean(r[1]) for r in rows]
    assert raw.labels.tolist() == cleaned.labels.tolist()


def test_make_snli_says_when_the_folder_holds_no_model(tmp_path, stage):
    tables = write_tables(tmp_path / "download_snli", 8)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match=r"neither vocab\.json nor tokenizer\.json here"):
        stage("make_snli").main(
            ["--params", str(write_params(tmp_path, {})), "--tables", str(tables),
             "--pretrained", str(tmp_path / "empty"), "--out", str(tmp_path / "out"),
             "--metrics", str(tmp_path / "m.json")]
        )  # fmt: skip
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------------------------
# The Hub, imitated on loopback HTTP


class FakeHub:
    """What `huggingface_hub` asks the Hub for when it fetches a model's files, on 127.0.0.1:

    GET  /api/models/<repo>/revision/<revision>?blobs=True  the commit and the files' hashes
    HEAD /<repo>/resolve/<commit>/<file>                    ETag, X-Repo-Commit, size
    GET  /<repo>/resolve/<commit>/<file>                    the bytes

    `repos[repo] = {file: bytes}`; every repository has one commit, `main` names it. Files
    ending in .safetensors or .bin are LFS files (listed with their SHA-256), the others git
    blobs (listed with their git SHA-1). `damaged` (repo, file)s are served with their last byte
    changed; the first GET of a `cut` one stops halfway, and a GET with a Range gets the rest.
    """

    def __init__(self):
        self.repos: dict[str, dict[str, bytes]] = {}
        self.damaged: set[tuple[str, str]] = set()
        self.cut: set[tuple[str, str]] = set()
        self.requests: list[str] = []
        handler = type("Handler", (_HubHandler,), {"hub": self})
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_port}"

    def commit(self, repo: str) -> str:
        return hashlib.sha1(repo.encode()).hexdigest()

    def __enter__(self) -> FakeHub:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


def lfs(name: str) -> bool:
    return name.endswith((".safetensors", ".bin"))


def hub_hash(name: str, data: bytes) -> str:
    if lfs(name):
        return hashlib.sha256(data).hexdigest()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class _HubHandler(BaseHTTPRequestHandler):
    hub: FakeHub

    def do_GET(self) -> None:
        self._answer(body=True)

    def do_HEAD(self) -> None:
        self._answer(body=False)

    def _answer(self, body: bool) -> None:
        path = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path)
        asked = f" {self.headers['Range']}" if "Range" in self.headers else ""
        self.hub.requests.append(f"{self.command} {path}{asked}")
        if m := re.fullmatch(r"/api/models/(.+)/revision/([^/]+)", path):
            return self._model_info(m[1], m[2])
        if m := re.fullmatch(r"/(.+)/resolve/([^/]+)/(.+)", path):
            return self._file(m[1], m[2], m[3], body)
        self._send(404, b"not found", {"X-Error-Code": "EntryNotFound"})

    def _model_info(self, repo: str, revision: str) -> None:
        if repo not in self.hub.repos:
            return self._send(404, b"{}", {"X-Error-Code": "RepoNotFound"})
        if revision not in ("main", self.hub.commit(repo)):
            return self._send(404, b"{}", {"X-Error-Code": "RevisionNotFound"})
        siblings = []
        for name, data in self.hub.repos[repo].items():
            entry = {"rfilename": name, "size": len(data)}
            if lfs(name):
                entry["lfs"] = {
                    "sha256": hub_hash(name, data),
                    "size": len(data),
                    "pointerSize": 134,
                }
            else:
                entry["blobId"] = hub_hash(name, data)
            siblings.append(entry)
        info = {"id": repo, "sha": self.hub.commit(repo), "siblings": siblings}
        self._send(200, json.dumps(info).encode(), {"Content-Type": "application/json"})

    def _file(self, repo: str, revision: str, name: str, body: bool) -> None:
        files = self.hub.repos.get(repo, {})
        if revision != self.hub.commit(repo) or name not in files:
            return self._send(404, b"", {"X-Error-Code": "EntryNotFound"}, body)
        data = files[name]
        etag = hub_hash(name, data)
        if (repo, name) in self.hub.damaged:
            data = data[:-1] + bytes([data[-1] ^ 1])
        headers = {"ETag": f'"{etag}"', "X-Repo-Commit": self.hub.commit(repo)}
        start = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range", ""))
        if start and body:
            rest = {"Content-Range": f"bytes {start[1]}-{len(data) - 1}/{len(data)}"}
            return self._send(206, data[int(start[1]) :], {**headers, **rest})
        if body and (repo, name) in self.hub.cut:
            self.hub.cut.discard((repo, name))
            self._send(200, data, headers, body=False)  # the headers of the whole file...
            self.wfile.write(data[: len(data) // 2])  # ...half of it, and hang up
            self.close_connection = True
            return None
        self._send(200, data, headers, body)

    def _send(self, status: int, data: bytes, headers: dict, body: bool = True) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(data)))
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        if body:
            self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:
        pass


def run_stage_online(tmp_path: Path, hub: FakeHub, params: Path, name: str) -> tuple[int, str]:
    """The stage in a process of its own, pointed at `hub` (huggingface_hub reads HF_ENDPOINT
    and HF_HUB_OFFLINE when imported), with a fresh Hugging Face cache."""
    env = {**os.environ, "HF_ENDPOINT": hub.endpoint, "HF_HUB_OFFLINE": "0",
           "HF_HOME": str(tmp_path / "hf_home"), "PYTHONPATH": str(REPO / "src"),
           "NO_PROXY": "127.0.0.1", "no_proxy": "127.0.0.1"}  # fmt: skip
    env.pop("HF_TOKEN", None)
    out, metrics = tmp_path / "data" / name, tmp_path / "metrics" / f"{name}.json"
    cmd = [sys.executable, str(REPO / "stages" / "hf_bert.py"), "--params", str(params),
           "--name", name, "--out", str(out), "--metrics", str(metrics)]  # fmt: skip
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    return done.returncode, done.stderr


def test_a_hub_model_is_fetched_at_the_commit_its_revision_names(tmp_path, tiny_hf_bert):
    """Fetched at the resolved commit, each file once; a body cut halfway resumed with Range after
    the whole 10 MiB pieces written (huggingface_hub's retry); refused in one line: pickled
    weights only, a damaged file (after fetching it once more), an unknown repository or
    revision, a digest other than sha256."""
    files = {p.name: p.read_bytes() for p in tiny_hf_bert.iterdir()}
    with FakeHub() as hub:
        hub.repos["google/tiny"] = {**files, "pytorch_model.bin": b"pickle", "README.md": b"hi"}
        pickled = {"config.json": files["config.json"], "pytorch_model.bin": b"pickle"}
        hub.repos["someone/pickled"] = {**pickled, "vocab.txt": b"[PAD]\n"}
        hub.repos["someone/damaged"] = dict(files)
        big = save({"w": np.zeros(6 << 20, np.float32)})  # 24 MiB: cut after 12, 1 piece of 10
        hub.repos["someone/cut"] = {**files, "model.safetensors": big}
        hub.cut.add(("someone/cut", "model.safetensors"))
        hub.damaged.add(("someone/damaged", "model.safetensors"))
        entries = {
            "tiny": {"source": "google/tiny", "revision": "main", "sha256": None},
            "pickled": {"source": "someone/pickled", "revision": "main", "sha256": None},
            "damaged": {"source": "someone/damaged", "revision": "main", "sha256": None},
            "nowhere": {"source": "google/nowhere", "revision": "main", "sha256": None},
            "old": {"source": "google/tiny", "revision": "v0.1", "sha256": None},
            "pinned": {"source": "google/tiny", "revision": "main", "sha256": "0" * 64},
            "cut": {"source": "someone/cut", "revision": "main", "sha256": None},
        }
        params = write_params(tmp_path, entries)
        code, err = run_stage_online(tmp_path, hub, params, "tiny")
        assert code == 0, err
        out = tmp_path / "data" / "tiny"
        assert sorted(p.name for p in out.iterdir()) == sorted(files)  # no pickle, no README
        assert all((out / n).read_bytes() == data for n, data in files.items())
        m = artifacts.read_json(tmp_path / "metrics" / "tiny.json")
        assert m["commit"] == hub.commit("google/tiny") and m["revision"] == "main"
        assert m["sha256"] == digest_of(out)
        fetched = [r for r in hub.requests if r.startswith("GET /google/tiny/resolve/")]
        assert sorted(fetched) == sorted(  # each file once, at the resolved commit
            f"GET /google/tiny/resolve/{hub.commit('google/tiny')}/{n}" for n in files
        )

        code, err = run_stage_online(tmp_path, hub, params, "cut")  # resumed within the run
        assert code == 0, err
        assert (tmp_path / "data" / "cut" / "model.safetensors").read_bytes() == big
        cut = [r for r in hub.requests if r.startswith("GET /someone/cut/") and "safetensors" in r]
        assert len(cut) == 2 and cut[1] == f"{cut[0]} bytes={10 << 20}-"  # after a whole piece

        for name, complaint in (
            ("pickled", r"no model\.safetensors; only pickled weights \(pytorch_model\.bin\)"),
            ("damaged", r"model\.safetensors arrived with hash [0-9a-f]{64}, the Hub lists"),
            ("nowhere", r"hf_bert\.nowhere: RepositoryNotFoundError: "),
            ("old", r"hf_bert\.old: RevisionNotFoundError: "),
            ("pinned", rf"hf_bert\.pinned\.sha256 is 0{{64}}, but .* digest {m['sha256']}: the"),
        ):
            code, err = run_stage_online(tmp_path, hub, params, name)
            lines = err.strip().splitlines()
            assert code == 1 and re.search(complaint, lines[-1]), err
            assert lines[-1].startswith("error: ") and not (tmp_path / "data" / name).exists()
    damaged = [r for r in hub.requests if r.startswith("GET /someone/damaged/resolve/")]
    assert damaged.count(damaged[-1]) == 2  # a damaged file is fetched once more before refusal
