from __future__ import annotations

import itertools
from fractions import Fraction

import mathkit  # type: ignore[import-not-found]
import pytest


def test_primes_below_100() -> None:
    assert mathkit.primes(100)[:10] == [2, 3, 5, 7, 11, 13, 17, 19, 23, 29]
    assert len(mathkit.primes(100)) == 25


@pytest.mark.parametrize(
    ("limit", "count"), [(1000, 168), (10_000, 1229), (100_000, 9592), (1_000_000, 78498)]
)
def test_prime_counts(limit: int, count: int) -> None:
    assert len(mathkit.primes(limit)) == count


@pytest.mark.parametrize(("n", "value"), [(10, 55), (50, 12586269025), (90, 2880067194370816120)])
def test_fib(n: int, value: int) -> None:
    assert mathkit.fib(n) == value


def test_fib_big_numbers_need_arbitrary_precision() -> None:
    assert len(str(mathkit.fib(5000))) == 1045


def test_harmonic() -> None:
    assert mathkit.harmonic(4) == Fraction(25, 12)
    assert mathkit.harmonic(1500).denominator > 10**600


def test_word_counts() -> None:
    text = "the quick brown fox jumps over the lazy dog " * 2000
    counts = mathkit.word_counts(text)
    assert counts["the"] == 4000 and counts["fox"] == 2000


def test_digest_chain_is_stable_across_architectures() -> None:
    assert (
        mathkit.digest_chain(b"fleetci", 1000)
        == "79aea9376d24c1f2ea944dbb863a1161edd2916a4b6b0f252db8f28d93ee0c2d"
    )
    assert mathkit.digest_chain(b"x", 200_000) == mathkit.digest_chain(b"x", 200_000)


@pytest.mark.parametrize("size", [10, 1000, 100_000])
def test_json_roundtrip(size: int) -> None:
    obj = {"items": [{"i": i, "name": f"n{i}", "ok": i % 2 == 0} for i in range(size)]}
    assert mathkit.roundtrip(obj) == obj


def test_sorting_many_records() -> None:
    records = [(i * 7919 % 10007, str(i)) for i in range(300_000)]
    ordered = sorted(records)
    assert ordered[0][0] == 0 and all(a <= b for a, b in itertools.pairwise(ordered))


def test_platform_facts_are_consistent() -> None:
    assert mathkit.endianness() == "little"
    bits = mathkit.pointer_bits()
    machine = mathkit.machine()
    assert bits == (32 if machine.startswith("armv") else 64), machine
