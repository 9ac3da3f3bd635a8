"""`bertpipe predict` and `bertpipe encode` on tiny checkpoints written here: outputs equal direct
forward passes of the models, files in both formats, and one-line errors for wrong inputs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest
import torch

from bertpipe import __main__ as cli_main
from bertpipe import artifacts, checkpoints, inference, routes, snli, use
from bertpipe.config import ModelConfig
from bertpipe.model import BERTClassifier, BERTModel
from bertpipe.runtime import CPU
from bertpipe.vocab import Vocab

ROOT = Path(__file__).resolve().parents[1]
CFG = ModelConfig(num_hiddens=12, ffn_num_hiddens=20, num_heads=3, num_blks=2, dropout=0.1,
                  max_position=40)  # fmt: skip
WORDS = "a man is sleeping . person sleeps dog the crane flying driver came he just left in park"
PAIRS = [  # (premise, hypothesis): case, brackets, unknown words, one pair longer than 12 tokens
    ("A man is sleeping .", "A person sleeps ."),
    ("( ( The dog ) ( runs ( in ( the park ) ) ) )", "A dog is outside ."),
    ("the man", "he just left the park and the dog came in the park ."),
    ("A crane driver came in .", "Nobody came ."),
    ("Zebras sleep .", "Zebras"),
    ("a man is in the park with a dog and a crane .", "a man is flying"),  # truncated at 12
    ("he", "is"),
]
FINETUNED_MAX_LEN = 12  # make_snli.max_len of the fine-tuning pairs, recorded in the classifier


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    """vocab.json, bert.safetensors and classifier.safetensors of one tiny model."""
    root = tmp_path_factory.mktemp("use")
    vocab = Vocab.build(WORDS.split() * 2, min_freq=1)
    vocab.save(root / "vocab.json")
    torch.manual_seed(0)
    bert = BERTModel(len(vocab), CFG)
    meta = checkpoints.bert_meta(CFG, len(vocab), vocab.sha1)
    artifacts.save_checkpoint(root / "bert.safetensors", bert.state_dict(), meta)
    classifier = BERTClassifier(bert, num_classes=3)
    with torch.no_grad():
        classifier.output.weight.mul_(8.0)  # probabilities well away from 1/3
    meta = checkpoints.classifier_meta(meta, list(snli.LABELS), FINETUNED_MAX_LEN, "fp32")
    artifacts.save_checkpoint(root / "classifier.safetensors", classifier.state_dict(), meta)
    return root


def bertpipe(*argv: str | Path) -> None:
    cli_main.main([str(a) for a in argv])


def predict_args(ckpt: Path, *more: str | Path) -> list:
    return ["predict", "--model", ckpt / "classifier.safetensors", "--vocab", ckpt / "vocab.json",
            *more]  # fmt: skip


def direct_probs(ckpt: Path, premise: str, hypothesis: str, max_len: int) -> list[float]:
    """The classifier on one unpadded pair, tokenised and truncated by hand (d2l's rule)."""
    model, _ = routes.load_classifier(ckpt / "classifier.safetensors")
    vocab = Vocab.load(ckpt / "vocab.json")

    def words(s: str) -> list[str]:
        return s.lower().replace("(", " ").replace(")", " ").split()

    p, h = words(premise), words(hypothesis)
    while len(p) + len(h) > max_len - 3:
        (h if len(h) >= len(p) else p).pop()
    tokens = ["<cls>", *p, "<sep>", *h, "<sep>"]
    ids = torch.tensor([[vocab[t] for t in tokens]])
    segments = torch.tensor([[0] * (len(p) + 2) + [1] * (len(h) + 1)])
    with torch.no_grad():
        logits = model.eval()(ids, segments, torch.tensor([len(tokens)]))
    return logits.softmax(-1)[0].tolist()


def test_predict_one_pair(ckpt, capsys):
    bertpipe(*predict_args(ckpt, "--format", "jsonl", *PAIRS[0]))
    (line,) = capsys.readouterr().out.splitlines()
    row = json.loads(line)
    assert (row["premise"], row["hypothesis"]) == PAIRS[0]
    probs = [row["probabilities"][k] for k in snli.LABELS]
    assert sum(probs) == pytest.approx(1.0, abs=1e-5)
    assert probs == pytest.approx(direct_probs(ckpt, *PAIRS[0], max_len=40), abs=1e-6)
    assert row["label"] == snli.LABELS[max(range(3), key=probs.__getitem__)]
    assert max(probs) > 0.5


def test_predict_tsv_and_jsonl_files_in_batches(ckpt, tmp_path, capsys):
    """Batches of 2 in order of length: every row still equals its own forward pass."""
    tsv = tmp_path / "pairs.tsv"
    tsv.write_text("premise\thypothesis\n" + "".join(f"{p}\t{h}\n" for p, h in PAIRS) + "\n")
    jsonl = tmp_path / "pairs.jsonl"
    jsonl.write_text("".join(json.dumps({"premise": p, "hypothesis": h}) + "\n" for p, h in PAIRS))
    options = ["--batch-size", "2", "--max-len", "12"]
    bertpipe(*predict_args(ckpt, "--file", tsv, "--format", "tsv", *options))
    header, *lines = capsys.readouterr().out.splitlines()
    assert header.split("\t") == ["premise", "hypothesis", "label", *snli.LABELS]
    rows = [line.split("\t") for line in lines]
    assert [tuple(r[:2]) for r in rows] == [(" ".join(p.split()), h) for p, h in PAIRS]
    for (p, h), row in zip(PAIRS, rows, strict=True):
        probs = [float(x) for x in row[3:]]
        assert sum(probs) == pytest.approx(1.0, abs=1e-5)
        assert probs == pytest.approx(direct_probs(ckpt, p, h, max_len=12), abs=1e-6)
        assert row[2] == snli.LABELS[probs.index(max(probs))]
    truncated = direct_probs(ckpt, *PAIRS[5], max_len=40)  # the long pair: truncation matters
    assert [float(x) for x in rows[5][3:]] != pytest.approx(truncated, abs=1e-4)

    bertpipe(*predict_args(ckpt, "--file", jsonl, "--format", "jsonl", *options))
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [[r["probabilities"][k] for k in snli.LABELS] for r in records] == [
        [float(x) for x in row[3:]] for row in rows
    ]


def test_predict_truncates_pairs_to_the_max_len_the_model_was_fine_tuned_with(ckpt, capsys):
    """By default to the recorded make_snli.max_len (12), not the model's 40 positions; the
    long pair shows which. --max-len overrides it, up to the positions."""
    long = PAIRS[5]
    bertpipe(*predict_args(ckpt, "--format", "tsv", *long))
    default = [float(x) for x in capsys.readouterr().out.splitlines()[1].split("\t")[3:]]
    assert default == pytest.approx(direct_probs(ckpt, *long, max_len=12), abs=1e-6)
    assert default != pytest.approx(direct_probs(ckpt, *long, max_len=40), abs=1e-4)
    bertpipe(*predict_args(ckpt, "--format", "tsv", "--max-len", "40", *long))
    chosen = [float(x) for x in capsys.readouterr().out.splitlines()[1].split("\t")[3:]]
    assert chosen == pytest.approx(direct_probs(ckpt, *long, max_len=40), abs=1e-6)
    message = run_error(capsys, *predict_args(ckpt, "--max-len", "41", *long))
    assert message == "error: --max-len: expected 3 to 40 (the model's limit)"


def test_a_classifier_that_does_not_record_its_max_len_is_refused(ckpt, tmp_path, capsys):
    """Written before classifiers recorded it: one line that says to rerun finetune."""
    tensors, meta = artifacts.load_checkpoint(ckpt / "classifier.safetensors")
    older = tmp_path / "older.safetensors"
    del meta["max_len"]
    artifacts.save_checkpoint(older, tensors, meta)
    message = run_error(
        capsys, "predict", "--model", older, "--vocab", ckpt / "vocab.json", "a", "b"
    )
    assert message == (
        f"error: {older}: the checkpoint header lacks max_len (an older version wrote it); "
        "rerun the finetune stage"
    )


def test_predict_table(ckpt, tmp_path, capsys):
    tsv = tmp_path / "pairs.tsv"
    tsv.write_text("".join(f"{p}\t{h}\n" for p, h in PAIRS))  # no header line
    bertpipe(*predict_args(ckpt, "--file", tsv))
    header, *lines = capsys.readouterr().out.splitlines()
    assert header.split()[:5] == ["#", "label", *snli.LABELS]
    assert len(lines) == len(PAIRS)
    for i, line in enumerate(lines, start=1):
        number, label, *probs = line.split()[:5]
        assert int(number) == i and label in snli.LABELS
        assert sum(map(float, probs)) == pytest.approx(1.0, abs=2e-4)
    assert lines[0].endswith("A man is sleeping . | A person sleeps .")


def test_predict_probabilities_match_the_library_call(ckpt):
    model, meta = use.load_classifier(ckpt / "classifier.safetensors")
    vocab = use.load_vocab(ckpt / "vocab.json", meta, "m")
    premises, hypotheses = [p for p, _ in PAIRS] * 30, [h for _, h in PAIRS] * 30
    pairs = use.encode_pairs(vocab, premises, hypotheses, max_len=40)
    one_batch = inference.probabilities(model, pairs, 1000, CPU)
    small_batches = inference.probabilities(model, pairs, 3, CPU)
    assert one_batch.shape == (210, 3)
    torch.testing.assert_close(torch.tensor(small_batches), torch.tensor(one_batch))
    expected = [direct_probs(ckpt, p, h, max_len=40) for p, h in PAIRS]
    torch.testing.assert_close(torch.tensor(one_batch[:7]), torch.tensor(expected))


def direct_encoding(ckpt: Path, ids: list[int], segments: list[int]) -> torch.Tensor:
    bert, _ = checkpoints.load_bert(ckpt / "bert.safetensors")
    with torch.no_grad():
        out = bert.eval().encoder(
            torch.tensor([ids]), torch.tensor([segments]), torch.tensor([len(ids)])
        )
    return out[0]


def test_encode_gives_the_encoders_vectors(ckpt, capsys):
    bert, meta = use.load_bert(ckpt / "bert.safetensors")
    vocab = use.load_vocab(ckpt / "vocab.json", meta, "m")
    single = use.encode(bert, vocab, "A crane is flying")
    assert single.tokens == ["<cls>", "a", "crane", "is", "flying", "<sep>"]
    assert single.segments == [0] * 6 and single.ids == [vocab[t] for t in single.tokens]
    torch.testing.assert_close(single.vectors, direct_encoding(ckpt, single.ids, single.segments))
    pair = use.encode(bert, vocab, "a crane driver came", "he just left")
    assert pair.segments == [0] * 6 + [1] * 4 and pair.vectors.shape == (10, 12)
    torch.testing.assert_close(pair.vectors, direct_encoding(ckpt, pair.ids, pair.segments))
    assert not torch.allclose(pair.vectors[2], single.vectors[2])  # "crane" in context

    args = ["encode", "--model", ckpt / "bert.safetensors", "--vocab", ckpt / "vocab.json"]
    bertpipe(*args, "a crane driver came", "he just left", "--dims", "4")
    first, *lines = capsys.readouterr().out.splitlines()
    assert first == "encoded shape (1, 10, 12); first 4 of 12 features per token"
    assert [line.split()[1] for line in lines] == pair.tokens
    shown = [float(v) for v in lines[2].split("[")[1].rstrip("]").split(",")]
    assert shown == pytest.approx(pair.vectors[2, :4].tolist(), abs=1e-4)

    bertpipe(*args, "a zebra")
    zebra = capsys.readouterr().out.splitlines()[3]  # after the header, <cls> and "a"
    assert zebra.split()[1] == "zebra" and zebra.endswith("(unknown: <unk>)")


def test_encode_without_sentences_runs_d2ls_crane_demo(ckpt, capsys):
    bertpipe("encode", "--model", ckpt / "bert.safetensors", "--vocab", ckpt / "vocab.json")
    *lines, last = capsys.readouterr().out.splitlines()
    vocab = Vocab.load(ckpt / "vocab.json")
    one = direct_encoding(
        ckpt, [vocab[t] for t in ["<cls>", "a", "crane", "is", "flying", "<sep>"]], [0] * 6
    )
    two_tokens = ["<cls>", "a", "crane", "driver", "came", "<sep>", "he", "just", "left", "<sep>"]
    two = direct_encoding(ckpt, [vocab[t] for t in two_tokens], [0] * 6 + [1] * 4)
    expected = torch.nn.functional.cosine_similarity(one[2], two[2], dim=0).item()
    assert last == f"cosine similarity of the two 'crane' vectors: {expected:.4f}"
    assert lines[0].startswith("'a crane is flying': encoded (1, 6, 12); 'crane' vector[:3] = [")
    assert lines[1].startswith("'a crane driver came' + 'he just left': encoded (1, 10, 12)")


def run_error(capsys, *argv) -> str:
    """The one stderr line of a command that must fail with status 1."""
    with pytest.raises(SystemExit) as info:
        bertpipe(*argv)
    assert info.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def test_a_vocabulary_that_is_not_the_models_is_refused(ckpt, tmp_path, capsys):
    tokens = Vocab.load(ckpt / "vocab.json").tokens
    bigger, shuffled = tmp_path / "bigger.json", tmp_path / "shuffled.json"
    Vocab([*tokens, "extra"]).save(bigger)
    Vocab([*tokens[:5], *reversed(tokens[5:])]).save(shuffled)  # same size, other ids
    for vocab in (bigger, shuffled):
        for command in (
            ["predict", "--model", ckpt / "classifier.safetensors", "--vocab", vocab, *PAIRS[0]],
            ["encode", "--model", ckpt / "bert.safetensors", "--vocab", vocab, "a crane"],
        ):
            message = run_error(capsys, *command)
            assert f"{vocab}: not the vocabulary" in message and "data/d2l_bert" in message


def test_the_same_token_list_in_other_bytes_is_accepted(ckpt, tmp_path, capsys):
    """One list, other bytes (no indentation): import_bert records the canonical bytes' SHA-1,
    and the file a user has may be d2l's original."""
    compact = tmp_path / "vocab.json"
    compact.write_text(json.dumps(Vocab.load(ckpt / "vocab.json").tokens))
    assert artifacts.sha1_of_file(compact) != artifacts.sha1_of_file(ckpt / "vocab.json")
    bertpipe("encode", "--model", ckpt / "bert.safetensors", "--vocab", compact, "a crane")
    assert capsys.readouterr().out.startswith("encoded shape (1, 4, 12)")


def test_missing_or_wrong_files_are_one_line_errors(ckpt, tmp_path, capsys):
    vocab, classifier = ckpt / "vocab.json", ckpt / "classifier.safetensors"
    nothing = tmp_path / "nothing.safetensors"
    assert "no such checkpoint" in run_error(
        capsys, "predict", "--model", nothing, "--vocab", vocab, "a", "b"
    )
    assert "cannot read the vocabulary" in run_error(
        capsys, "predict", "--model", classifier, "--vocab", tmp_path / "none.json", "a", "b"
    )
    assert "expected a 'bert' checkpoint, found 'classifier'" in run_error(
        capsys, "encode", "--model", classifier, "--vocab", vocab, "a"
    )
    not_safetensors = tmp_path / "model.safetensors"
    not_safetensors.write_bytes(b"PK\x03\x04 not a checkpoint")
    assert "not a safetensors checkpoint" in run_error(
        capsys, "encode", "--model", not_safetensors, "--vocab", vocab, "a"
    )
    assert "cannot read the pairs" in run_error(
        capsys, *predict_args(ckpt, "--file", tmp_path / "none.tsv")
    )
    assert "expected PREMISE HYPOTHESIS" in run_error(capsys, *predict_args(ckpt, "only one"))
    assert "reads at most 40" in run_error(
        capsys, "encode", "--model", ckpt / "bert.safetensors", "--vocab", vocab, "a " * 39
    )


@pytest.mark.parametrize(
    ("name", "content", "complaint"),
    [
        ("p.tsv", "a\tb\n\na\tb\tc\n", r"p.tsv, line 3: 3 tab-separated fields"),
        ("p.jsonl", '{"premise": "a", "hypothesis": "b"}\n{"premise": "a"}\n',
         r'p.jsonl, line 2: needs string fields "premise" and "hypothesis"'),
        ("p.jsonl", "[1, 2]\n", r"p.jsonl, line 1: expected an object"),
        ("p.jsonl", "{oops\n", r"p.jsonl, line 1: not JSON"),
        ("p.csv", "a,b\n", r"p.csv: unknown format; name it .tsv or .jsonl"),
        ("p.tsv", "premise\thypothesis\n\n", r"p.tsv: no sentence pairs"),
    ],
)  # fmt: skip
def test_bad_pair_files_name_the_line(tmp_path, name, content, complaint):
    (tmp_path / name).write_text(content)
    with pytest.raises(Exception, match=complaint):
        use.read_pairs(tmp_path / name)


def test_the_console_script_runs_the_command_line(monkeypatch, capsys):
    """pyproject.toml's `bertpipe` entry point, loaded and called as an installed console script
    calls it (no arguments; the command line in sys.argv), is this command line."""
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    entry = EntryPoint("bertpipe", scripts["bertpipe"], "console_scripts").load()
    monkeypatch.setattr(sys, "argv", ["bertpipe", "--help"])
    with pytest.raises(SystemExit) as info:
        entry()
    usage = capsys.readouterr().out
    assert info.value.code == 0 and usage.startswith("usage: bertpipe [-h] COMMAND")
    assert "predict" in usage and "encode" in usage


def test_python_dash_m_bertpipe(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    command = [sys.executable, "-m", "bertpipe", "predict", "--model", str(tmp_path / "m"),
               "--vocab", str(tmp_path / "v"), "a", "b"]  # fmt: skip
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and done.stdout == ""
    assert (
        done.stderr.strip()
        == f"error: {tmp_path / 'm'}: no such checkpoint; run the finetune stage first"
    )


def test_fill_mask_ranks_first_the_word_a_tiny_model_was_trained_to_put_there(tmp_path, capsys):
    """This pipeline's MLM head (d2l's imported weights run the same code), trained for a few
    steps to put "henson" at the masked slot of the demo sentence; the command's default
    sentence spells the mask [MASK], Google's way."""
    words = use.JIM_HENSON.replace("[MASK]", "henson").split()
    vocab = Vocab.build(words + WORDS.split(), min_freq=1)
    folder = tmp_path / "pretrain"  # as the pretrain stage writes it
    vocab.save(tmp_path / "pretrain" / "vocab.json")
    torch.manual_seed(0)
    bert = BERTModel(len(vocab), CFG)
    slot = 1 + words.index("henson", 4)  # after <cls>: the second "henson"
    ids = torch.tensor([[vocab[t] for t in ["<cls>", *words, "<sep>"]]])  # (1, T)
    ids[0, slot] = vocab.mask_id
    segments, valid_lens = torch.zeros_like(ids), torch.tensor([ids.shape[1]])
    before = use.fill_mask(bert, vocab, use.JIM_HENSON, top_k=1).guesses[0][0][0]
    assert before != "henson"
    opt = torch.optim.Adam(bert.parameters(), lr=1e-2)
    for _ in range(20):
        _, mlm_logits, _ = bert.train()(ids, segments, valid_lens, torch.tensor([[slot]]))
        loss = torch.nn.functional.cross_entropy(mlm_logits[0], torch.tensor([vocab["henson"]]))
        opt.zero_grad()
        loss.backward()
        opt.step()
    meta = checkpoints.bert_meta(CFG, len(vocab), vocab.sha1)
    artifacts.save_checkpoint(folder / "model.safetensors", bert.state_dict(), meta)

    bertpipe("fill-mask", "--model", folder, "--top-k", "3")  # vocab.json beside the checkpoint
    sentence, where, *guesses = capsys.readouterr().out.splitlines()
    assert sentence == "<cls> " + use.JIM_HENSON.replace("[MASK]", "<mask>") + " <sep>"
    assert where == f"<mask> at position {slot}:" and len(guesses) == 3
    assert guesses[0].split()[1] == "henson"
    probs = [float(g.split()[2]) for g in guesses]
    assert probs == sorted(probs, reverse=True) and sum(probs) <= 1.0
    filled = use.fill_mask(bert, vocab, use.JIM_HENSON.replace("[MASK]", "<mask>"), top_k=3)
    assert [round(p, 4) for _, p in filled.guesses[0]] == probs
    assert "no <mask> or [MASK]" in run_error(capsys, "fill-mask", "--model", folder, "jim")
