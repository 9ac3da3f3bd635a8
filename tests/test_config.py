"""Strict params loading: every section of the real params.yaml loads; every kind of mistake is
an error that names the file and the key."""

from __future__ import annotations

import typing
from pathlib import Path

import pytest
import yaml

from bertpipe import config
from bertpipe.config import ParamsError

REPO = Path(__file__).resolve().parents[1]


def write_params(tmp_path: Path, document: dict) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(document), encoding="utf-8")
    return path


def repo_params() -> dict:
    return yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))


@pytest.mark.parametrize("section", sorted(config.SECTIONS))
def test_every_section_of_the_repo_params_loads(section):
    cfg = config.load(REPO / "params.yaml", section)
    kind = config.SECTIONS[section]
    assert isinstance(cfg, typing.get_origin(kind) or kind)


def test_d2l_bert_entries_are_checked_each(tmp_path):
    doc = repo_params()
    sha1 = "c72329e68a732bef0452e4b96a1c341c8910f81f"
    doc["d2l_bert"] = {"bert_small": {"mirrors": ["x.zip"], "sha1": sha1, "num_heads": 4,
                                      "dropout": 0.2}}  # fmt: skip
    entries = config.load(write_params(tmp_path, doc), "d2l_bert")
    assert entries["bert_small"] == config.D2lBertConfig(("x.zip",), sha1, 4, 0.2)
    doc["d2l_bert"]["bert_small"]["num_heads"] = 0
    with pytest.raises(ParamsError, match=r"d2l_bert\.bert_small\.num_heads: expected a pos"):
        config.load(write_params(tmp_path, doc), "d2l_bert")


def test_hf_bert_entries_are_checked_each(tmp_path):
    doc = repo_params()
    digest = "0" * 64
    doc["hf_bert"] = {
        "tiny": {"source": "google/bert_uncased_L-2_H-128_A-2", "revision": "main", "sha256": None},
        "mine": {"source": "models/mine", "revision": None, "sha256": digest},
    }
    entries = config.load(write_params(tmp_path, doc), "hf_bert")
    assert entries["tiny"] == config.HfBertConfig("google/bert_uncased_L-2_H-128_A-2", "main", None)
    assert entries["mine"] == config.HfBertConfig("models/mine", None, digest)
    doc["hf_bert"]["mine"]["sha256"] = "ABC"
    with pytest.raises(ParamsError, match=r"hf_bert\.mine\.sha256: expected null or 64 lower"):
        config.load(write_params(tmp_path, doc), "hf_bert")
    del doc["hf_bert"]["mine"]["sha256"]
    with pytest.raises(ParamsError, match=r"hf_bert\.mine: missing key\(s\) sha256"):
        config.load(write_params(tmp_path, doc), "hf_bert")


@pytest.mark.parametrize(
    ("pretrained", "ok"),
    [("pretrain", True), ("d2l_bert/bert_small", True), ("hf_bert/bert_tiny", True),
     ("hf_bert/", False), ("hf_bert/a/b", False), ("hf/bert_tiny", False), ("bert", False)],
)  # fmt: skip
def test_finetune_starts_from_one_of_the_three_routes(tmp_path, pretrained, ok):
    doc = repo_params()
    doc["finetune"]["pretrained"] = pretrained
    path = write_params(tmp_path, doc)
    if ok:
        assert config.load(path, "finetune").pretrained == pretrained
        return
    with pytest.raises(ParamsError, match=r"finetune\.pretrained: expected pretrain, d2l_bert/"):
        config.load(path, "finetune")


def test_values_keep_their_types():
    cfg = config.load(REPO / "params.yaml", "finetune")
    assert cfg.lr == pytest.approx(1e-4) and isinstance(cfg.lr, float)
    wiki = config.load(REPO / "params.yaml", "download_wikitext")
    assert isinstance(wiki.mirrors, tuple) and len(wiki.mirrors) == 2
    assert config.load(REPO / "params.yaml", "download_snli").files["snli_1.0_dev.txt"] is None


def test_int_is_accepted_where_a_float_is_expected(tmp_path):
    doc = repo_params()
    doc["pretrain"]["lr"] = 1
    cfg = config.load(write_params(tmp_path, doc), "pretrain")
    assert cfg.lr == 1.0 and isinstance(cfg.lr, float)


@pytest.mark.parametrize(("written", "value"), [("1e-4", 1e-4), ("2e-05", 2e-5), ("1.0e3", 1e3)])
def test_yaml_1_2_exponents_are_numbers_as_dvc_writes_them(tmp_path, written, value):
    """PyYAML alone reads these as strings; DVC (YAML 1.2) reads and writes them as numbers."""
    path = tmp_path / "params.yaml"
    text = (REPO / "params.yaml").read_text(encoding="utf-8")
    path.write_text(text.replace("lr: 1.0e-4", f"lr: {written}"), encoding="utf-8")
    assert config.load(path, "finetune").lr == value
    assert config.load(path, "make_snli").max_len == 128  # integers stay integers


def test_a_quoted_number_is_explained(tmp_path):
    path = tmp_path / "params.yaml"
    text = (REPO / "params.yaml").read_text(encoding="utf-8").replace("lr: 1.0e-4", "lr: '1e-4'")
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ParamsError, match=r"finetune\.lr: '1e-4' is a string.*without quotes"):
        config.load(path, "finetune")


@pytest.mark.parametrize(
    ("section", "mutate", "message"),
    [
        ("pretrain", lambda s: s.update(lr_typo=1), r"pretrain: unknown key\(s\) lr_typo"),
        ("pretrain", lambda s: s.pop("num_steps"), r"pretrain: missing key\(s\) num_steps"),
        ("pretrain", lambda s: s.update(num_steps=2.5), r"pretrain\.num_steps: expected int"),
        ("pretrain", lambda s: s.update(num_steps=True), r"pretrain\.num_steps: expected int"),
        ("pretrain", lambda s: s.update(batch_size=0), r"pretrain\.batch_size: expected a pos"),
        ("model", lambda s: s.update(dropout=1.5), r"model\.dropout: expected a number in"),
        ("download_snli", lambda s: s.update(mirrors="x"), r"download_snli\.mirrors: expected a"),
        ("download_snli", lambda s: s.update(files=[]), r"download_snli\.files: expected a map"),
        ("model", lambda s: s.update(num_heads=3), r"model\.num_hiddens \(128\) must be a mult"),
        ("make_examples", lambda s: s.update(mask_rate=0.001), r"make_examples\.max_len \* mas"),
        ("make_examples", lambda s: s.update(max_len=4), r"make_examples\.max_len: 4 is not in"),
        ("make_snli", lambda s: s.update(max_len=2), r"make_snli\.max_len: 2 is not in \[3,"),
        ("pretrain", lambda s: s.update(lr_schedule="step"), r"pretrain\.lr_schedule: expected o"),
        ("pretrain", lambda s: s.update(eval_every=-1), r"pretrain\.eval_every: expected an in"),
        ("pretrain", lambda s: s.update(masking="random"), r"pretrain\.masking: expected one of"),
        ("finetune", lambda s: s.update(warmup_fraction=1.0), r"finetune\.warmup_fraction: exp"),
        ("finetune", lambda s: s.update(grad_clip=-1.0), r"finetune\.grad_clip: expected a n"),
    ],
)
def test_mistakes_name_the_file_and_key(tmp_path, section, mutate, message):
    doc = repo_params()
    mutate(doc[section])
    path = write_params(tmp_path, doc)
    with pytest.raises(ParamsError, match=message) as info:
        config.load(path, section)
    assert str(path) in str(info.value)


def test_unknown_and_missing_sections(tmp_path):
    doc = repo_params()
    doc["pretrian"] = doc.pop("pretrain")
    path = write_params(tmp_path, doc)
    with pytest.raises(ParamsError, match=r"unknown section\(s\) pretrian"):
        config.load(path, "model")
    del doc["pretrian"]
    with pytest.raises(ParamsError, match="missing section 'pretrain'"):
        config.load(write_params(tmp_path, doc), "pretrain")


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ParamsError, match="no such params file"):
        config.load(tmp_path / "nope.yaml", "model")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n", encoding="utf-8")
    with pytest.raises(ParamsError, match="not valid YAML"):
        config.load(bad, "model")


@pytest.mark.parametrize(
    ("text", "key", "lines"),
    [
        ("model: {}\npretrain: {}\nmodel: {}\n", "model", (1, 3)),  # a whole section twice
        ("finetune:\n  lr: 1.0\n  seed: 0\n  lr: 2.0\n", "lr", (2, 4)),  # a key in a section
        ("a:\n  b:\n    - {c: 1, c: 2}\n", "c", (3, 3)),  # deeper, on one line
    ],
)
def test_a_repeated_key_is_an_error_naming_it_and_its_lines(tmp_path, text, key, lines):
    path = tmp_path / "params.yaml"
    path.write_text(text, encoding="utf-8")
    assert yaml.safe_load(text)  # PyYAML alone keeps the last one without a word
    message = rf"key '{key}' on line {lines[0]} and again on line {lines[1]}; YAML would"
    with pytest.raises(ParamsError, match=message) as info:
        config.load(path, "model")
    assert str(path) in str(info.value)


def test_a_merged_key_may_be_overridden(tmp_path):
    doc = repo_params()
    del doc["evaluate"]
    text = (
        yaml.safe_dump(doc) + "evaluate:\n  <<: {batch_size: 64, split: dev}\n  batch_size: 128\n"
    )
    path = tmp_path / "params.yaml"
    path.write_text(text, encoding="utf-8")
    assert config.load(path, "evaluate") == config.EvaluateConfig(batch_size=128, split="dev")
