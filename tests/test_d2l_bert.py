"""Importing d2l's published BERT weights: d2l-format archives built here and served over
loopback HTTP go through the d2l_bert stage; the imported model computes
what d2l's formulas compute from the original tensors; bad files are refused without running
code from them; a download cut short resumes in the next run; a published archive's number of
heads is checked."""

from __future__ import annotations

import io
import json
import math
import re
import zipfile
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml

from bertpipe import artifacts, checkpoints, config, d2l_bert, download, routes
from bertpipe.config import ModelConfig
from bertpipe.errors import UserError
from bertpipe.model import BERTModel
from bertpipe.vocab import SPECIALS, Vocab

ROOT = Path(__file__).resolve().parents[1]
SHAPES = {  # name: (vocab size, num_hiddens, ffn_num_hiddens, num_heads, num_blks, max_position)
    "small_odd": (43, 14, 22, 2, 3, 29),
    "base_like": (37, 24, 96, 12, 12, 40),  # bert.base's 12 heads and 12 blocks, tiny widths
}


def d2l_vocab(size: int) -> list[str]:
    """A d2l 1.0.3 vocab.json list: sorted, so punctuation and digits come before the specials."""
    words = ["!", ",", ".", *"0123456789"]
    words += [f"w{i:02d}" for i in range(size - len(words) - len(SPECIALS))]
    tokens = sorted([*SPECIALS, *words])
    assert len(tokens) == size and tokens.index("<pad>") == 15 and tokens.index("<unk>") == 17
    return tokens


def d2l_state_dict(shape: tuple[int, ...], seed: int = 0) -> OrderedDict:
    """d2l's BERTModel state dict: its names and shapes, random values (LayerNorms not 1/0)."""
    V, H, FFN, heads, blks, max_pos = shape
    names = BERTModel(V, ModelConfig(H, FFN, heads, blks, 0.0, max_pos)).state_dict()
    g = torch.Generator().manual_seed(seed)
    out = OrderedDict()
    for name, tensor in names.items():
        scale = 0.3 if tensor.dim() > 1 else 0.1
        out[name] = torch.randn(tensor.shape, generator=g) * scale
        if name.endswith(("ln.weight", "mlp.2.weight")):
            out[name] += 1.0
    return out


def saved(obj: object) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def d2l_archive(path: Path, tensors: dict, tokens: list[str], folder: str) -> Path:
    """d2l's zip layout: `<folder>/pretrained.params` and `<folder>/vocab.json`."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(f"{folder}/", b"")
        archive.writestr(f"{folder}/pretrained.params", saved(tensors))
        archive.writestr(f"{folder}/vocab.json", json.dumps(tokens))
    return path


def d2l_folder(path: Path, tensors: object, tokens: list[str]) -> Path:
    """A local d2l archive (a mirror may be a plain path) holding these two files."""
    path.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path / "bert.small.torch.zip", "w") as archive:
        archive.writestr("bert.small.torch/pretrained.params", saved(tensors))
        archive.writestr("bert.small.torch/vocab.json", json.dumps(tokens))
    return path / "bert.small.torch.zip"


def write_params(path: Path, num_heads: int, mirrors: list[str], sha1: str) -> Path:
    entry = {"mirrors": mirrors, "sha1": sha1, "num_heads": num_heads, "dropout": 0.2}
    path.write_text(yaml.safe_dump({"d2l_bert": {"tiny": entry}}))
    return path


def run_d2l_bert(stage, tmp_path: Path, archive: Path, num_heads: int, out: str = "d2l_bert",
                mirrors: list[str] | None = None) -> Path:  # fmt: skip
    """Run the d2l_bert stage on `archive` (or these mirrors of it) into tmp_path / out."""
    sha1 = artifacts.sha1_of_file(archive)
    params = write_params(tmp_path / "params.yaml", num_heads, mirrors or [str(archive)], sha1)
    stage("d2l_bert").main(
        ["--params", str(params), "--name", "tiny", "--out", str(tmp_path / out),
         "--metrics", str(tmp_path / f"{out}.json")]
    )  # fmt: skip
    return tmp_path / out


# d2l's BERTModel written out from its definition (reference §9), on the raw tensors


def linear(t: dict, name: str, x: torch.Tensor) -> torch.Tensor:
    return x @ t[f"{name}.weight"].T + t[f"{name}.bias"]


def layer_norm(t: dict, name: str, x: torch.Tensor) -> torch.Tensor:
    return F.layer_norm(x, x.shape[-1:], t[f"{name}.weight"], t[f"{name}.bias"], eps=1e-5)


def d2l_forward(t: dict, num_heads: int, tokens, segments, valid_lens, pred_positions):
    B, T = tokens.shape
    X = (
        t["encoder.token_embedding.weight"][tokens]
        + t["encoder.segment_embedding.weight"][segments]
    )
    X = X + t["encoder.pos_embedding"][:, :T, :]
    H = X.shape[-1]
    d = H // num_heads
    lens = valid_lens.repeat_interleave(num_heads)  # (B * heads,)
    keep = torch.arange(T, dtype=torch.float32)[None, None, :] < lens[:, None, None]

    def heads(x):  # (B, T, H) -> (B * heads, T, d)
        return x.reshape(B, T, num_heads, d).permute(0, 2, 1, 3).reshape(B * num_heads, T, d)

    i = 0
    while f"encoder.blks.{i}.ffn.dense1.weight" in t:
        blk = f"encoder.blks.{i}"
        q, k, v = (heads(linear(t, f"{blk}.attention.{w}", X)) for w in ("W_q", "W_k", "W_v"))
        scores = torch.where(keep, q @ k.transpose(1, 2) / math.sqrt(d), torch.tensor(-1e6))
        out = (scores.softmax(-1) @ v).reshape(B, num_heads, T, d).permute(0, 2, 1, 3)
        attention = linear(t, f"{blk}.attention.W_o", out.reshape(B, T, H))
        Y = layer_norm(t, f"{blk}.addnorm1.ln", X + attention)
        ffn = linear(t, f"{blk}.ffn.dense2", torch.relu(linear(t, f"{blk}.ffn.dense1", Y)))
        X = layer_norm(t, f"{blk}.addnorm2.ln", Y + ffn)
        i += 1
    nsp = linear(t, "nsp.output", torch.tanh(linear(t, "hidden.0", X[:, 0])))
    gathered = X[torch.arange(B)[:, None], pred_positions]  # (B, P, H)
    mlm = layer_norm(t, "mlm.mlp.2", torch.relu(linear(t, "mlm.mlp.0", gathered)))
    return X, linear(t, "mlm.mlp.3", mlm), nsp


def random_batch(V: int, max_pos: int, B: int = 4, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    T = min(13, max_pos)
    tokens = torch.randint(0, V, (B, T), generator=g)
    segments = (torch.arange(T)[None, :] >= torch.randint(2, T, (B, 1), generator=g)).long()
    valid_lens = torch.tensor([T, 5, T - 2, 3])[:B]
    pred_positions = torch.randint(0, 3, (B, 3), generator=g)
    return tokens, segments, valid_lens, pred_positions


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_download_and_import_reproduce_d2ls_outputs(tmp_path, http_server, name, stage):
    shape = SHAPES[name]
    V, H, FFN, heads, blks, max_pos = shape
    tensors, tokens = d2l_state_dict(shape), d2l_vocab(V)
    folder = "bert.small.torch" if name == "small_odd" else "bert.base.torch"
    archive = d2l_archive(http_server.root / f"{folder}.zip", tensors, tokens, folder)
    mirrors = [http_server.url(f"missing/{folder}.zip"), http_server.url(f"{folder}.zip")]
    out = run_d2l_bert(stage, tmp_path, archive, heads, mirrors=mirrors)
    assert sorted(p.name for p in out.iterdir()) == ["model.safetensors", "vocab.json"]

    model, meta = checkpoints.load_bert(out / "model.safetensors")
    expected_model = {"num_hiddens": H, "ffn_num_hiddens": FFN, "num_heads": heads,
                      "num_blks": blks, "dropout": 0.2, "max_position": max_pos}  # fmt: skip
    assert meta["kind"] == "bert" and meta["model"] == expected_model and meta["vocab_size"] == V
    vocab = Vocab.load(out / "vocab.json")
    assert vocab.tokens == tokens and vocab.pad_id == 15 and vocab.unk_id == 17
    assert meta["vocab_sha1"] == vocab.sha1 == artifacts.sha1_of_file(out / "vocab.json")
    metrics = artifacts.read_json(tmp_path / "d2l_bert.json")
    assert metrics["model"] == expected_model and metrics["vocab_size"] == V
    assert metrics["num_parameters"] == sum(t.numel() for t in tensors.values())
    assert metrics["special_ids"]["pad_id"] == 15
    assert metrics["archive_sha1"] == artifacts.sha1_of_file(archive)

    batch = random_batch(V, max_pos)
    with torch.no_grad():
        ours = model.eval()(*batch)
        reference = d2l_forward(tensors, heads, *batch)
        one_head = d2l_forward(tensors, 1, *batch)
    torch.testing.assert_close(ours[0], reference[0], atol=1e-5, rtol=1e-4)  # encoder outputs
    torch.testing.assert_close(ours[1], reference[1], atol=1e-5, rtol=1e-4)  # MLM logits
    torch.testing.assert_close(ours[2], reference[2], atol=1e-5, rtol=1e-4)  # NSP logits
    assert not torch.allclose(ours[0], one_head[0], atol=1e-3)  # the heads param matters


def test_the_import_is_byte_identical_when_repeated(tmp_path, stage):
    weights = d2l_folder(tmp_path / "w", d2l_state_dict(SHAPES["small_odd"]), d2l_vocab(43))
    first = artifacts.sha1_of_file(
        run_d2l_bert(stage, tmp_path, weights, 2, "one") / "model.safetensors"
    )
    again = artifacts.sha1_of_file(
        run_d2l_bert(stage, tmp_path, weights, 2, "two") / "model.safetensors"
    )
    assert first == again


def test_a_download_cut_short_is_resumed_by_the_next_run(tmp_path, http_server, stage):
    shape = SHAPES["base_like"]
    V, heads = shape[0], shape[3]
    folder = "bert.base.torch"
    archive = d2l_archive(http_server.root / f"{folder}.zip", d2l_state_dict(shape),
                          d2l_vocab(V), folder)  # fmt: skip
    assert archive.stat().st_size > 150_000  # so that the cut leaves a partial to resume
    url = http_server.url(f"{folder}.zip")
    http_server.cut(f"{folder}.zip", after=150_000)  # the first run's download dies mid-body,
    http_server.fail(f"{folder}.zip", 404, times=1)  # and its retry finds the mirror gone
    partials = download.partials_for(tmp_path / "d2l_bert")
    with pytest.raises(UserError, match=f"partial downloads in {re.escape(str(partials))}"):
        run_d2l_bert(stage, tmp_path, archive, heads, mirrors=[url])
    assert not (tmp_path / "d2l_bert").exists()

    out = run_d2l_bert(stage, tmp_path, archive, heads, mirrors=[url])
    first, retry, next_run = http_server.hits_for(f"{folder}.zip")
    assert "range" not in first.headers
    assert retry.headers["range"] == next_run.headers["range"] == "bytes=150000-"
    assert sorted(p.name for p in out.iterdir()) == ["model.safetensors", "vocab.json"]
    assert not partials.exists()  # removed once the download passed


def test_a_published_archive_is_imported_with_its_own_number_of_heads_only(
    tmp_path, http_server, stage, monkeypatch
):
    """The generated archive, as a stand-in for one of d2l's, is entered in the same table under
    its own SHA-1: the real archives cannot be used here."""
    shape = SHAPES["small_odd"]  # 14 hidden units: 2 heads, or 7
    V, heads = shape[0], shape[3]
    archive = d2l_archive(http_server.root / "w.zip", d2l_state_dict(shape), d2l_vocab(V), "w")
    url, sha1 = http_server.url("w.zip"), artifacts.sha1_of_file(archive)
    # Unknown to the table, any count that divides the width is taken from the params.
    out = run_d2l_bert(stage, tmp_path, archive, 7, "unknown", mirrors=[url])
    assert checkpoints.load_bert(out / "model.safetensors")[1]["model"]["num_heads"] == 7

    monkeypatch.setitem(d2l_bert.PUBLISHED, sha1, ("w.zip", heads))
    hits = len(http_server.hits)
    message = (rf"params.yaml: d2l_bert.tiny.num_heads: 7, but sha1 {sha1} is d2l's w.zip, "
               rf"which has 2 heads; set num_heads: 2$")  # fmt: skip
    with pytest.raises(UserError, match=message):
        run_d2l_bert(stage, tmp_path, archive, 7, "known", mirrors=[url])
    assert len(http_server.hits) == hits  # refused before downloading
    out = run_d2l_bert(stage, tmp_path, archive, heads, "known", mirrors=[url])
    assert checkpoints.load_bert(out / "model.safetensors")[1]["model"]["num_heads"] == heads


def test_the_published_heads_are_those_params_yaml_suggests_for_d2ls_archives():
    text = (ROOT / "params.yaml").read_text(encoding="utf-8")
    entries = re.findall(r"sha1: ([0-9a-f]{40}), num_heads: (\d+)", text)
    assert len(entries) == 2
    assert {sha1: int(heads) for sha1, heads in entries} == {
        sha1: heads for sha1, (_, heads) in d2l_bert.PUBLISHED.items()
    }


class RunsCode:
    """Unpickling this calls open(marker, "w"): a visible side effect of code in a pickle."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_pickle_that_runs_code_is_refused_without_running_it(tmp_path, stage):
    marker = tmp_path / "code-ran"
    tensors = d2l_state_dict(SHAPES["small_odd"])
    tensors["encoder.extra"] = RunsCode(marker)
    weights = d2l_folder(tmp_path / "w", tensors, d2l_vocab(43))
    with pytest.raises(UserError, match=r"refused: .* could run code \(Unsupported global"):
        run_d2l_bert(stage, tmp_path, weights, 2)
    assert not marker.exists() and not (tmp_path / "d2l_bert").exists()
    # the file is a real threat: an unrestricted load runs the code
    with zipfile.ZipFile(weights) as archive:
        torch.load(io.BytesIO(archive.read("bert.small.torch/pretrained.params")),
                   weights_only=False)  # fmt: skip
    assert marker.exists()


def without(name: str):
    def change(t: dict) -> dict:
        del t[name]
        return t

    return change


def reshaped(name: str):
    def change(t: dict) -> dict:
        t[name] = t[name].T.contiguous()
        return t

    return change


@pytest.mark.parametrize(
    ("change", "complaint"),
    [
        (without("nsp.output.bias"), r"missing tensor\(s\) 'nsp.output.bias' for a BERT with"),
        (without("encoder.blks.1.attention.W_k.weight"), r"'encoder.blks.1.attention.W_k.weight'"),
        (reshaped("encoder.blks.2.ffn.dense2.weight"),
         r"'encoder.blks.2.ffn.dense2.weight' has shape \(22, 14\), expected \(14, 22\)"),
        (lambda t: {**t, "encoder.blks.1.extra": torch.zeros(3)},
         r"unexpected tensor\(s\) 'encoder.blks.1.extra'"),
        (lambda t: {**t, "mlm.mlp.3.weight": torch.zeros(44, 14)},
         r"'mlm.mlp.3.weight' has shape \(44, 14\), expected \(43, 14\)"),
        (without("encoder.token_embedding.weight"),
         r"no tensor 'encoder.token_embedding.weight'; not the state dict of d2l's BERTModel"),
        (lambda t: [*t.values()], r"expected a state dict .* found a list"),
        (lambda t: {"model": t}, r"entry 'model' is not a tensor but OrderedDict"),
        (lambda t: {**t, "hidden.0.bias": torch.zeros(14, dtype=torch.long)},
         r"'hidden.0.bias' has dtype torch.int64, expected floats"),
    ],
)  # fmt: skip
def test_weights_that_do_not_fit_are_refused_by_name(tmp_path, change, complaint, stage):
    tensors = change(d2l_state_dict(SHAPES["small_odd"]))
    weights = d2l_folder(tmp_path / "w", tensors, d2l_vocab(43))
    with pytest.raises(UserError, match=complaint) as info:
        run_d2l_bert(stage, tmp_path, weights, 2)
    assert str(weights / "pretrained.params") in str(info.value)
    assert not (tmp_path / "d2l_bert").exists() and not (tmp_path / "d2l_bert.json").exists()


def test_a_file_that_is_no_torch_save_is_refused(tmp_path, stage):
    weights = tmp_path / "bert.small.torch.zip"
    with zipfile.ZipFile(weights, "w") as archive:
        archive.writestr("bert.small.torch/pretrained.params", b"<?xml version='1.0'?><Error>")
        archive.writestr("bert.small.torch/vocab.json", json.dumps(d2l_vocab(43)))
    message = r"pretrained.params: not a file written by torch.save \(Unsupported operand 60\)"
    with pytest.raises(UserError, match=message):
        run_d2l_bert(stage, tmp_path, weights, 2)


@pytest.mark.parametrize(
    ("tokens", "complaint"),
    [
        (d2l_vocab(43)[:-1], r"vocab.json: 42 tokens, but the token embedding of .* has 43 rows"),
        ([t for t in d2l_vocab(43) if t != "<pad>"] + ["w99"],
         r"vocab.json: not a vocabulary: the special token\(s\) <pad> are missing"),
    ],
)  # fmt: skip
def test_a_vocabulary_that_does_not_fit_is_refused(tmp_path, tokens, complaint, stage):
    weights = d2l_folder(tmp_path / "w", d2l_state_dict(SHAPES["small_odd"]), tokens)
    with pytest.raises(UserError, match=complaint):
        run_d2l_bert(stage, tmp_path, weights, 2)
    assert not (tmp_path / "d2l_bert").exists()


def test_heads_must_divide_the_inferred_width(tmp_path, stage):
    weights = d2l_folder(tmp_path / "w", d2l_state_dict(SHAPES["small_odd"]), d2l_vocab(43))
    with pytest.raises(
        UserError, match=r"d2l_bert.<name>.num_heads \(4\) must divide num_hiddens \(14"
    ):
        run_d2l_bert(stage, tmp_path, weights, 4)


def test_a_failed_import_leaves_the_previous_output(tmp_path, stage):
    good = d2l_folder(tmp_path / "good", d2l_state_dict(SHAPES["small_odd"]), d2l_vocab(43))
    out = run_d2l_bert(stage, tmp_path, good, 2)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    bad = d2l_folder(tmp_path / "bad", d2l_state_dict(SHAPES["small_odd"]), d2l_vocab(42))
    with pytest.raises(UserError):
        run_d2l_bert(stage, tmp_path, bad, 2)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_the_imported_model_fine_tunes_on_snli_tokenised_with_its_vocabulary(
    tmp_path, monkeypatch, stage
):
    """d2l_bert -> make_snli (d2l's vocab.json) -> finetune: the stages fit together."""
    from bertpipe import synthetic

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("BERTPIPE_WORKERS", "1")
    tokens = sorted({*d2l_vocab(43), "a", "is", "man", "dog", "the"})
    shape = (len(tokens), *SHAPES["small_odd"][1:])
    weights = d2l_folder(tmp_path / "w", d2l_state_dict(shape), tokens)
    imported = run_d2l_bert(stage, tmp_path, weights, 2)
    snli = tmp_path / "snli"
    snli.mkdir()
    for split, n in (("train", 60), ("test", 20)):
        rows = synthetic.snli_rows(n, seed=len(split))
        (snli / f"snli_1.0_{split}.txt").write_text("".join("\t".join(r) + "\n" for r in rows))
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({
        "make_snli": {"max_len": 24},
        "finetune": config.FinetuneConfig(16, 1.0e-3, 1, 0, pretrained="d2l_bert/tiny").__dict__,
    }))  # fmt: skip
    stage("make_snli").main(
        ["--params", str(params), "--tables", str(snli), "--pretrained", str(imported),
         "--out", "make_snli", "--metrics", "make_snli.json"]
    )  # fmt: skip
    snli_meta = artifacts.read_json(tmp_path / "make_snli" / "meta.json")
    assert snli_meta["pad_id"] == tokens.index("<pad>") != 1
    first = np.load(tmp_path / "make_snli" / "train" / "token_ids.npy")[0]
    assert first == tokens.index("<cls>")
    stage("finetune").main(
        ["--params", str(params), "--pretrained", str(imported),
         "--snli", "make_snli", "--out", "finetune", "--metrics", "finetune.json",
         "--live", "finetune_live", "--device", "cpu"]
    )  # fmt: skip
    classifier, meta = routes.load_classifier(tmp_path / "finetune" / "model.safetensors")
    assert meta["vocab_sha1"] == Vocab.load(imported / "vocab.json").sha1
    bert, _ = checkpoints.load_bert(imported / "model.safetensors")
    # fine-tuning started from the imported weights (one epoch at lr 1e-3 moves them a little)
    start = bert.encoder.token_embedding.weight
    tuned = classifier.encoder.token_embedding.weight
    assert (tuned - start).abs().max() < 0.05 and not torch.equal(tuned, start)
