"""Generated stand-ins for WikiText-2 and SNLI, in the real archive layouts and file formats.

Tests, CI and the small-params run cannot download the real data (and must not depend on it), so
they use these. The text is not random noise: it carries structure a small BERT can learn, so a
falling loss and an above-chance accuracy mean the pipeline works, not that it memorised noise.

- WikiText: each paragraph keeps to one topic, and a topic fixes which subjects, verbs, objects
  and places its sentences use. Masked words are predictable from their neighbours (MLM), and a
  true next sentence shares the topic of its predecessor while a random one usually does not (NSP).
- SNLI: an entailed hypothesis restates part of the premise, a contradiction negates it or swaps
  its verb, a neutral one adds a detail the premise does not state.

Both draw words from one lexicon, so the pretraining vocabulary covers the NLI sentences. An
untrained model in d2l's weight-archive layout stands in for d2l's published `bert.small`.
Archives are byte-identical for the same arguments (fixed member timestamps, seeded generator).
"""

from __future__ import annotations

import io
import json
import random
import zipfile
from pathlib import Path

from bertpipe.config import ModelConfig

SUBJECTS = ["man", "woman", "boy", "girl", "dog", "child", "player", "worker"]
VERBS = ["riding", "eating", "playing", "holding", "carrying", "watching", "painting", "cooking"]
OBJECTS = ["bike", "ball", "guitar", "boat", "horse", "sandwich", "book", "kite"]
PLACES = ["park", "beach", "street", "kitchen", "field", "river", "garden", "station"]
COLORS = ["red", "blue", "green", "black", "white", "yellow"]
DETAILS = ["for a friend", "before dinner", "to win a prize", "on a sunny day", "with joy"]
NUM_TOPICS = 8

SNLI_HEADER = [
    "gold_label", "sentence1_binary_parse", "sentence2_binary_parse", "sentence1_parse",
    "sentence2_parse", "sentence1", "sentence2", "captionID", "pairID",
    "label1", "label2", "label3", "label4", "label5",
]  # fmt: skip
LABELS = ["entailment", "contradiction", "neutral"]


def _topic_words(topic: int, words: list[str]) -> list[str]:
    """Two words of `words` that belong to `topic` (topics overlap a little, as real ones do)."""
    return [words[topic % len(words)], words[(topic + 3) % len(words)]]


def _wiki_sentence(rng: random.Random, topic: int) -> str:
    subject = rng.choice(_topic_words(topic, SUBJECTS))
    verb = rng.choice(_topic_words(topic, VERBS))
    obj = rng.choice(_topic_words(topic, OBJECTS))
    place = rng.choice(_topic_words(topic, PLACES))
    year = 1890 + 7 * topic + rng.randrange(5)
    forms = [
        f"the {rng.choice(COLORS)} {subject} was {verb} the {obj} near the {place}",
        f"in {year} , a {subject} kept {verb} a {obj} at the {place}",
        f"the {place} had a {obj} @-@ {subject} {verb} all day",
        f"every {subject} at the {place} was {verb} a {rng.choice(COLORS)} {obj}",
    ]
    sentence = rng.choice(forms)
    if rng.random() < 0.05:
        sentence += " with <unk>"
    return sentence


def wikitext_lines(num_paragraphs: int, seed: int) -> list[str]:
    """WikiText-2-formatted lines: headings, blank lines, and one paragraph per line."""
    rng = random.Random(seed)
    lines = [" \n", f" = Generated article {seed} = \n", " \n"]
    for i in range(num_paragraphs):
        if i % 6 == 0:
            lines += [" \n", f" = = Section {i // 6} = = \n", " \n"]
        topic = rng.randrange(NUM_TOPICS)
        sentences = [_wiki_sentence(rng, topic) for _ in range(rng.randint(1, 7))]
        lines.append(" " + " ".join(s + " ." for s in sentences) + " \n")
    return lines


def _binary_parse(tokens: list[str]) -> str:
    """A right-branching binary parse in SNLI's bracket syntax: `( a ( b c ) )`."""
    if len(tokens) == 1:
        return tokens[0]
    return f"( {tokens[0]} {_binary_parse(tokens[1:])} )"


def _nli_pair(rng: random.Random, label: str) -> tuple[str, str]:
    subject, verb, obj = rng.choice(SUBJECTS), rng.choice(VERBS), rng.choice(OBJECTS)
    place, color = rng.choice(PLACES), rng.choice(COLORS)
    premise = f"A {color} {subject} is {verb} a {obj} in the {place} ."
    other_verb = rng.choice([v for v in VERBS if v != verb])
    hypotheses = {
        "entailment": [f"A {subject} is {verb} a {obj} .", f"A {subject} is {verb} .",
                       f"A {subject} is in the {place} ."],
        "contradiction": [f"A {subject} is {other_verb} a {obj} .", f"Nobody is {verb} a {obj} .",
                          f"The {subject} is not {verb} ."],
        "neutral": [f"A {subject} is {verb} a {obj} {rng.choice(DETAILS)} .",
                    f"The {subject} is happy in the {place} ."],
    }  # fmt: skip
    return premise, rng.choice(hypotheses[label])


def snli_rows(num_pairs: int, seed: int, unlabelled_share: float = 0.02) -> list[list[str]]:
    """SNLI 1.0 `.txt` rows (header first); about `unlabelled_share` of them have gold label `-`."""
    rng = random.Random(seed)
    rows = [SNLI_HEADER]
    for i in range(num_pairs):
        label = rng.choice(LABELS)
        premise, hypothesis = _nli_pair(rng, label)
        votes = [label] * 5
        gold = label
        if rng.random() < unlabelled_share:
            votes = [LABELS[(LABELS.index(label) + k) % 3] for k in range(5)]
            gold = "-"
        p_tokens, h_tokens = premise.split(), hypothesis.split()
        rows.append([
            gold, _binary_parse(p_tokens), _binary_parse(h_tokens),
            "(ROOT " + " ".join(f"(X {t})" for t in p_tokens) + ")",
            "(ROOT " + " ".join(f"(X {t})" for t in h_tokens) + ")",
            premise, hypothesis, f"{seed}{i}.jpg#0", f"{seed}{i}.jpg#0r1{label[0]}", *votes,
        ])  # fmt: skip
    return rows


def _zip_bytes(members: dict[str, bytes]) -> bytes:
    """A zip whose bytes depend only on `members` (fixed timestamps and permissions)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            info = zipfile.ZipInfo(name, date_time=(2016, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            archive.writestr(info, data)
    return buffer.getvalue()


def write_wikitext_archive(
    path: Path, num_paragraphs: int = 3000, seed: int = 0
) -> dict[str, bytes]:
    """Write `wikitext-2-v1.zip`'s layout to `path`; return the members' bytes by basename."""
    splits = {"train": num_paragraphs, "valid": max(1, num_paragraphs // 10),
              "test": max(1, num_paragraphs // 10)}  # fmt: skip
    files = {
        f"wiki.{split}.tokens": "".join(wikitext_lines(n, seed + k)).encode("utf-8")
        for k, (split, n) in enumerate(splits.items())
    }
    Path(path).write_bytes(_zip_bytes({f"wikitext-2/{name}": data for name, data in files.items()}))
    return files


def write_snli_archive(
    path: Path, num_train: int = 6000, num_eval: int = 600, seed: int = 0
) -> dict[str, bytes]:
    """Write `snli_1.0.zip`'s layout (train/dev/test `.txt`) to `path`; return members' bytes."""
    sizes = {"train": num_train, "dev": num_eval, "test": num_eval}
    files = {
        f"snli_1.0_{split}.txt": "".join(
            "\t".join(row) + "\n" for row in snli_rows(n, seed + 100 * (k + 1))
        ).encode("utf-8")
        for k, (split, n) in enumerate(sizes.items())
    }
    Path(path).write_bytes(_zip_bytes({f"snli_1.0/{name}": data for name, data in files.items()}))
    return files


def write_d2l_bert_archive(path: Path, tokens: list[str], cfg: ModelConfig, seed: int = 0) -> None:
    """A stand-in for d2l's `bert.small.torch.zip`: an untrained BERTModel's state dict saved
    with torch.save as `bert.small.torch/pretrained.params`, and `tokens` sorted as d2l 1.0.3
    sorts its vocabulary (so `<pad>` is not id 1) as `bert.small.torch/vocab.json`."""
    import torch

    from bertpipe.model import BERTModel

    torch.manual_seed(seed)
    buffer = io.BytesIO()
    vocabulary = sorted(tokens)
    torch.save(BERTModel(len(vocabulary), cfg).state_dict(), buffer)
    members = {
        "bert.small.torch/pretrained.params": buffer.getvalue(),
        "bert.small.torch/vocab.json": json.dumps(vocabulary).encode(),
    }
    path.write_bytes(_zip_bytes(members))
