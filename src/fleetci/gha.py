"""GitHub Actions workflow-command helpers (masking, groups, outputs, step summary)."""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def in_actions() -> bool:
    return os.environ.get("GITHUB_ACTIONS") == "true"


def add_mask(secret: str | None) -> None:
    """Ask the runner to redact a secret from all later log lines (no-op outside Actions)."""
    if secret and in_actions():
        sys.stdout.write(f"::add-mask::{secret}\n")
        sys.stdout.flush()


@contextmanager
def group(title: str) -> Iterator[None]:
    """Fold a block of log lines in the Actions UI."""
    if in_actions():
        print(f"::group::{title}", flush=True)
    try:
        yield
    finally:
        if in_actions():
            print("::endgroup::", flush=True)


def _append(var: str, text: str) -> bool:
    target = os.environ.get(var)
    if not target:
        return False
    with Path(target).open("a", encoding="utf-8") as fh:
        fh.write(text if text.endswith("\n") else text + "\n")
    return True


def _key_value(name: str, value: str) -> str:
    """``name=value``; a value with a line break in the runner's heredoc form, under a delimiter it does
    not contain, so its later lines cannot set other outputs or variables."""
    if "\n" not in value and "\r" not in value:
        return f"{name}={value}"
    delimiter = f"ghadelimiter_{uuid.uuid4()}"
    while delimiter in value:
        delimiter = f"ghadelimiter_{uuid.uuid4()}"
    return f"{name}<<{delimiter}\n{value}\n{delimiter}"


def set_output(name: str, value: str) -> bool:
    return _append("GITHUB_OUTPUT", _key_value(name, value))


def set_env(name: str, value: str) -> bool:
    return _append("GITHUB_ENV", _key_value(name, value))


def append_step_summary(markdown: str) -> bool:
    return _append("GITHUB_STEP_SUMMARY", markdown)


def markdown_table(headers: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines) + "\n"
