"""Response scrubbing throughput: what decoding, masking and watching for encoded secrets cost per MB.

    python bench/bench_scrub.py            # aligned text table
    python bench/bench_scrub.py --quick    # a smaller body (a smoke run)

One 32 MiB JSON-ish body (random words, no secret in it: the common case) fed in 64 KiB chunks, one secret
in the vault, side by side:

* `StreamScrubber` alone: the literal mask the hook applies to every response today;
* `BodyScrubber` on the identity body: that mask plus `Reveals` (other casings, hex, base64 at three
  alignments, base64url, percent-encoding, JSON escapes) and the hold-back that lets it see across chunks;
* `zlib`/`brotli` decompression alone, then `BodyScrubber` on the gzip, deflate and br bodies: decoding
  plus everything above.

No thresholds: it prints MB/s (of decoded bytes) so the cost of each stage can be read off.
"""

from __future__ import annotations

import argparse
import gzip
import random
import sys
import time
import zlib
from collections.abc import Callable, Iterable
from pathlib import Path

import brotli

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ifc.enforce.encodings import BodyScrubber
from ifc.enforce.secrets import Held, StreamScrubber, Vault

CHUNK = 1 << 16
VAULT = Vault([Held("API_KEY", b"ifc-sentinel-0123456789abcdef0123456789abcdef", b"sk-ant-api03-" + b"x7" * 40)])


def body(size: int) -> bytes:
    rng = random.Random(12)
    words = [bytes(rng.choice(b"abcdefghijklmnopqrstuvwxyzABCDEF0123456789") for _ in range(rng.randint(2, 12)))
             for _ in range(4096)]
    out, total = [], 0
    while total < size:
        line = b'{"id": "' + rng.choice(words) + b'", "text": "' + b" ".join(rng.choices(words, k=12)) + b'"},\n'
        out.append(line)
        total += len(line)
    return b"".join(out)[:size]


def chunks(data: bytes) -> Iterable[bytes]:
    return (data[i:i + CHUNK] for i in range(0, len(data), CHUNK))


def timed(run: Callable[[], int], decoded: int) -> float:
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        assert run() == decoded
        best = min(best, time.perf_counter() - start)
    return decoded / best / 1e6


def literal(data: bytes) -> int:
    scrub = StreamScrubber(VAULT)
    return sum(len(scrub.feed(c)) for c in chunks(data)) + len(scrub.flush())


def scrubbed(encoding: str | None, data: bytes) -> int:
    body = BodyScrubber(VAULT, encoding, lambda held: None, max_decoded=1 << 40)
    return sum(len(p) for c in chunks(data) for p in body.feed(c)) + sum(len(p) for p in body.finish())


def inflate(data: bytes, wbits: int) -> int:
    d = zlib.decompressobj(wbits)
    return sum(len(d.decompress(c)) for c in chunks(data)) + len(d.flush())


def unbrotli(data: bytes) -> int:
    d = brotli.Decompressor()
    return sum(len(d.process(c)) for c in chunks(data))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    plain = body((4 if args.quick else 32) << 20)
    gz, zl, br = gzip.compress(plain, 6), zlib.compress(plain, 6), brotli.compress(plain, quality=5)
    n = len(plain)
    rows = [
        ("identity", "StreamScrubber (literal mask, today)", timed(lambda: literal(plain), n)),
        ("identity", "BodyScrubber (mask + encoded forms)", timed(lambda: scrubbed(None, plain), n)),
        ("gzip", "zlib decompress alone", timed(lambda: inflate(gz, 31), n)),
        ("gzip", "BodyScrubber", timed(lambda: scrubbed("gzip", gz), n)),
        ("deflate", "zlib decompress alone", timed(lambda: inflate(zl, 15), n)),
        ("deflate", "BodyScrubber", timed(lambda: scrubbed("deflate", zl), n)),
        ("br", "brotli decompress alone", timed(lambda: unbrotli(br), n)),
        ("br", "BodyScrubber", timed(lambda: scrubbed("br", br), n)),
    ]
    print(f"body {n / 2**20:.0f} MiB decoded, {CHUNK // 1024} KiB chunks, one secret; MB/s of decoded bytes")
    print(f"{'encoding':<10} {'what':<40} {'MB/s':>8}")
    for encoding, what, rate in rows:
        print(f"{encoding:<10} {what:<40} {rate:>8.0f}")


if __name__ == "__main__":
    main()
