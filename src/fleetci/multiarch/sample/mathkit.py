"""A small pure-Python library: the sample project `fleetci bench multiarch` and the tests run."""

from __future__ import annotations

import hashlib
import json
import platform
import re
import struct
from fractions import Fraction


def machine() -> str:
    return platform.machine()


def primes(limit: int) -> list[int]:
    sieve = bytearray([1]) * (limit + 1)
    sieve[0:2] = b"\0\0"
    for i in range(2, int(limit**0.5) + 1):
        if sieve[i]:
            sieve[i * i :: i] = bytearray(len(range(i * i, limit + 1, i)))
    return [i for i, v in enumerate(sieve) if v]


def fib(n: int) -> int:
    a, b = 0, 1
    for _ in range(n):
        a, b = b, a + b
    return a


def harmonic(n: int) -> Fraction:
    return sum((Fraction(1, k) for k in range(1, n + 1)), Fraction(0))


def word_counts(text: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    for word in re.findall(r"[a-z']+", text.lower()):
        counts[word] = counts.get(word, 0) + 1
    return counts


def digest_chain(seed: bytes, rounds: int) -> str:
    value = seed
    for _ in range(rounds):
        value = hashlib.sha256(value).digest()
    return value.hex()


def roundtrip(obj: object) -> object:
    return json.loads(json.dumps(obj, sort_keys=True))


def pointer_bits() -> int:
    return struct.calcsize("P") * 8


def endianness() -> str:
    return "little" if struct.pack("=I", 1) == struct.pack("<I", 1) else "big"
