"""Package the real public files in `shared/data` as the archives the pipeline downloads.

    python benchmarks/real_data.py --shared ../shared/data --out /tmp/mirror [--wiki-repeat K]
        [--snli-repeat K]

`shared/data` holds WikiText-2's valid and test files and SNLI's dev file only. The archives
keep every held-out figure held out:
- `wikitext-2/wiki.train.tokens` = wiki.test.tokens repeated K times (241,211 whitespace-split
  tokens at K = 1). wiki.valid.tokens stays out of it, so that text the model never trained on
  is left to evaluate pretraining with; the test member is the training text here. The valid
  and test members are the real files (their SHA-1s are the real release's, as in params.yaml).
- `snli_1.0/snli_1.0_{train,dev,test}.txt` = disjoint parts of snli_1.0_dev.txt, by a seeded
  shuffle of its 3,059 Flickr30k images: 70% of them to train (2,141 images, 7,000 rows, 6,887
  labelled pairs), 15% to dev (459 images, 1,470 rows, 1,451 labelled) and 15% to test (459
  images, 1,530 rows, 1,504 labelled). 15% keeps about 1,500 pairs on each held-out side (a
  standard error near 1.3 points at 50% accuracy) and leaves 70% to learn from.
  Whole images, not rows: each caption (premise) comes with about three hypotheses, one per
  label, and 244 images have two or three captions, so splitting rows would put the same
  premise, or the same scene, on both sides. Contiguous blocks of the file would mostly keep
  them together too, but the file's order is SNLI's, not known to be random, and an image's
  captions are not always adjacent. Rows keep their file order within each part; only the
  train part is repeated K times (--snli-repeat).
Prints the `download_wikitext` / `download_snli` params sections (YAML) that point at them.
"""

from __future__ import annotations

import argparse
import hashlib
import random
import sys
import zipfile
from pathlib import Path

import yaml

SNLI_SEED = 0  # which images go to which part; fixed, so that every run measures the same split
SNLI_SHARES = {"train": 0.70, "dev": 0.15}  # of the images; test gets the rest


def wiki_valid_and_test(shared: Path) -> bytes:
    """Every WikiText-2 byte in `shared`: speed benchmarks' text, where nothing is held out."""
    folder = shared / "wikitext-2"
    return (folder / "wiki.valid.tokens").read_bytes() + (folder / "wiki.test.tokens").read_bytes()


def wiki_members(shared: Path, repeat: int) -> dict[str, bytes]:
    valid = (shared / "wikitext-2" / "wiki.valid.tokens").read_bytes()
    test = (shared / "wikitext-2" / "wiki.test.tokens").read_bytes()
    return {"wiki.train.tokens": test * repeat, "wiki.valid.tokens": valid,
            "wiki.test.tokens": test}  # fmt: skip


def image_parts(images: set[bytes]) -> dict[bytes, str]:
    """Each image's part (train, dev or test), by a seeded shuffle of the sorted images."""
    order = sorted(images)  # a fixed order before the shuffle, whatever the file's
    random.Random(SNLI_SEED).shuffle(order)
    part, start = {}, 0
    for name, share in SNLI_SHARES.items():
        end = start + round(share * len(order))
        part |= dict.fromkeys(order[start:end], name)
        start = end
    return part | dict.fromkeys(order[start:], "test")


def snli_members(shared: Path, repeat: int) -> dict[str, bytes]:
    header, *rows = (shared / "snli_1.0" / "snli_1.0_dev.txt").read_bytes().splitlines(True)
    caption = header.rstrip(b"\r\n").split(b"\t").index(b"captionID")  # "<image>.jpg#<n>"
    images = [row.split(b"\t")[caption].split(b"#")[0] for row in rows]
    part = image_parts(set(images))
    chosen = {name: b"".join(r for r, i in zip(rows, images, strict=True) if part[i] == name)
              for name in ("train", "dev", "test")}  # fmt: skip
    return {
        "snli_1.0_train.txt": header + chosen["train"] * repeat,
        "snli_1.0_dev.txt": header + chosen["dev"],
        "snli_1.0_test.txt": header + chosen["test"],
    }


def write_zip(path: Path, folder: str, members: dict[str, bytes]) -> str:
    """Write the archive (stored, not deflated: it is local) and return its SHA-1."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        for name, data in members.items():
            archive.writestr(zipfile.ZipInfo(f"{folder}/{name}", (2016, 1, 1, 0, 0, 0)), data)
    return hashlib.sha1(path.read_bytes()).hexdigest()


def build(shared: Path, out: Path, wiki_repeat: int = 1, snli_repeat: int = 1) -> dict:
    """Write both archives into `out`; return the download params sections."""
    out.mkdir(parents=True, exist_ok=True)
    wiki = wiki_members(shared, wiki_repeat)
    snli = snli_members(shared, snli_repeat)
    wiki_sha1 = write_zip(out / "wikitext-2-v1.zip", "wikitext-2", wiki)
    snli_sha1 = write_zip(out / "snli_1.0.zip", "snli_1.0", snli)
    return {
        "download_wikitext": {
            "mirrors": [str((out / "wikitext-2-v1.zip").resolve())],
            "sha1": wiki_sha1,
            "files": {name: hashlib.sha1(data).hexdigest() for name, data in wiki.items()},
        },
        "download_snli": {
            "mirrors": [str((out / "snli_1.0.zip").resolve())],
            "sha1": snli_sha1,
            "files": dict.fromkeys(snli),
        },
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--shared", type=Path, default=Path("../shared/data"))
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--wiki-repeat", type=int, default=1)
    parser.add_argument("--snli-repeat", type=int, default=1)
    args = parser.parse_args(argv)
    sections = build(args.shared, args.out, args.wiki_repeat, args.snli_repeat)
    yaml.safe_dump(sections, sys.stdout, sort_keys=False)


if __name__ == "__main__":
    main()
