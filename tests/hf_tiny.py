"""A tiny Google-style BERT, in the layout of a Hugging Face Hub repository, built offline.

The hf_bert route's tests cannot reach the Hub. What `bert-base-uncased` is on the Hub, a folder
written by `save_pretrained`, this writes at a tiny shape: `config.json`, `model.safetensors`
(random `BertForPreTraining` weights: encoder, pooler, MLM and NSP heads) and the tokenizer's
files, with a WordPiece vocabulary trained by `tokenizers` on the generated WikiText and SNLI
text, lower-cased as the uncased models are.

`tokenizers`' WordPiece trainer breaks ties between equally frequent merges differently from one
process to the next, so two builds can differ in their vocabulary; tests compare with the
tokenizer the folder holds, never with fixed ids.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
from transformers import BertConfig, BertForPreTraining, BertTokenizer

from bertpipe import synthetic

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]  # BERT's, in Google's vocab.txt order


def corpus(num_paragraphs: int = 60, num_pairs: int = 300, seed: int = 0) -> list[str]:
    """The generated WikiText lines and SNLI sentences: the text the vocabulary is trained on."""
    rows = synthetic.snli_rows(num_pairs, seed)[1:]  # no header
    return synthetic.wikitext_lines(num_paragraphs, seed) + [s for r in rows for s in r[5:7]]


def train_tokenizer(lines: list[str], vocab_size: int = 400) -> BertTokenizer:
    """An uncased BERT tokenizer whose WordPiece vocabulary `tokenizers` learns from `lines`."""
    wordpiece = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    wordpiece.normalizer = normalizers.BertNormalizer(lowercase=True)
    wordpiece.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size, special_tokens=SPECIALS, show_progress=False
    )
    wordpiece.train_from_iterator(lines, trainer)
    return BertTokenizer(vocab=wordpiece.get_vocab(), do_lower_case=True)


def write_tiny_bert(folder: Path, seed: int = 0, hidden: int = 32, layers: int = 2,
                    heads: int = 2, ffn: int = 64, max_position: int = 128) -> Path:  # fmt: skip
    """Write a Hub-layout BERT (random weights, trained vocabulary) to `folder`; return it."""
    tokenizer = train_tokenizer(corpus(seed=seed))
    cfg = BertConfig(vocab_size=len(tokenizer), hidden_size=hidden, num_hidden_layers=layers,
                     num_attention_heads=heads, intermediate_size=ffn,
                     max_position_embeddings=max_position)  # fmt: skip
    torch.manual_seed(seed)
    folder.mkdir(parents=True, exist_ok=True)
    BertForPreTraining(cfg).save_pretrained(folder)  # config.json, model.safetensors
    tokenizer.save_pretrained(folder)  # tokenizer.json, tokenizer_config.json
    return folder
