"""What every ``fleetci`` command parses with: one-line argparse errors, and settings parsers as flag types.

The verb modules (``cli/cache.py``, ``cli/bench.py`` …) import these from here, not from the ``fleetci.cli``
package, whose ``build_parser`` imports them: imports point one way.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import NoReturn, TypeVar

from fleetci.errors import UsageError

T = TypeVar("T")


class Parser(argparse.ArgumentParser):
    """ArgumentParser whose errors are one line (argparse prints usage + error over several)."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: {message} (see '{self.prog} --help')")


def arg_type(parse: Callable[[str], T]) -> Callable[[str], T]:
    """Use a ``fleetci.config`` parser as an argparse ``type=`` with its own error message."""

    def convert(text: str) -> T:
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    convert.__name__ = parse.__name__
    return convert
