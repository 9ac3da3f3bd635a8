"""Which thread counts give the same trained bits: pretraining and fine-tuning at d2l's shapes.

    python benchmarks/thread_bits.py --shared ../shared/data [--threads 1 2 4 8] [--steps 5]
        [--precision fp32|bf16]

Runs `ours.py pretrain` and `ours.py finetune` (d2l's model, batch 512, dropout on, with the
README's controls: warm-up, linear decay, weight decay and clipping) once per thread count, each
in a fresh process, and prints the SHA-1 of the trained weights per count. Equal digests mean
bit-identical weights. A digest needs no real cores: 8 threads on 2 cores compute what they
would on 8, only slower.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def digest(command: str, threads: int, steps: int, shared: Path, precision: str) -> str:
    wiki = shared / "wikitext-2/wiki.test.tokens"
    args = [sys.executable, str(HERE / "ours.py"), command, "--threads", str(threads),
            "--steps", str(steps), "--controls", "--wiki", str(wiki),
            "--precision", precision]  # fmt: skip
    if command == "finetune":
        args += ["--snli-file", str(shared / "snli_1.0/snli_1.0_dev.txt")]
    out = subprocess.run(args, check=True, capture_output=True, text=True).stdout
    return json.loads(out.splitlines()[-1])["weights_sha1"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--shared", type=Path, default=Path("../shared/data"))
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    args = parser.parse_args(argv)
    for command in ("pretrain", "finetune"):
        digests = {n: digest(command, n, args.steps, args.shared, args.precision)
                   for n in args.threads}  # fmt: skip
        groups: dict[str, list[int]] = {}
        for n, d in digests.items():
            groups.setdefault(d, []).append(n)
        agree = " | ".join(
            f"{'/'.join(map(str, ns))} threads: {d[:12]}" for d, ns in groups.items()
        )
        print(f"{command}: {agree}", flush=True)


if __name__ == "__main__":
    main()
