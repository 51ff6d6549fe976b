"""The seed's tag mapping and the build's metadata block.

A GitHub image tag carries the platform (``presto-<sha>-velox-<sha>-linux-amd64``); on GitLab the
platform moves into the repository path (``x86/<image>:presto-<sha>-velox-<sha>``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from fleetci.errors import UsageError

ARCH_DIRS = {"amd64": "x86", "arm64": "arm"}
PLATFORM_SUFFIX = re.compile(r"-linux-(amd64|arm64)$")
TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT[\d:.]+Z\s?")
META_LINE = re.compile(r"^\s*([A-Za-z][A-Za-z0-9 _/-]{1,40}?)\s*:\s+(\S.*?)\s*$")
KNOWN_KEYS = {
    "image_tag",
    "presto_repository",
    "presto_commit",
    "velox_repository",
    "velox_commit",
    "target_platform",
    "worker_bundle_mode",
    "worker_variant",
    "runner_label",
    "set_velox_backward_compatible",
    "images",
}
VALID_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
# The OCI distribution spec's repository name: lower-case path components joined by '/'.
VALID_NAME = re.compile(r"^[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*)*$")


@dataclass(frozen=True)
class TagMapping:
    github_tag: str
    arch_dir: str  # x86 | arm
    gitlab_tag: str

    def repository(self, image: str) -> str:
        """``x86/presto-coordinator`` for the image name ``presto-coordinator``."""
        return f"{self.arch_dir}/{image}"


def map_tag(github_tag: str) -> TagMapping:
    """Seed rule: ``…-linux-amd64`` -> ``x86/…:<tag without the platform>``, arm64 -> ``arm/…``."""
    check_tag(github_tag, "image tag")
    m = PLATFORM_SUFFIX.search(github_tag)
    if m is None:
        raise UsageError(f"image tag {github_tag!r} does not end in -linux-amd64 or -linux-arm64")
    return TagMapping(github_tag, ARCH_DIRS[m.group(1)], github_tag[: m.start()])


def check_tag(tag: str, what: str = "tag") -> str:
    """A tag the registry accepts (``[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}``); a bad one is a usage error."""
    if not VALID_TAG.fullmatch(tag):
        raise UsageError(f"{tag!r} is not a valid {what} (letters, digits, '_', '.', '-'; at most 128)")
    return tag


def check_repository(name: str, what: str = "repository name") -> str:
    """A repository path the registry accepts (lower-case components, '/'-separated, 255 at most)."""
    if len(name) > 255 or not VALID_NAME.fullmatch(name):
        raise UsageError(
            f"{name!r} is not a valid {what} "
            "(lower-case letters, digits and . _ - between '/'-separated parts)"
        )
    return name


def image_name(repo_tag: str) -> str:
    """``ghcr.io/org/presto-coordinator:tag`` -> ``presto-coordinator``."""
    name = repo_tag.rsplit("@", 1)[0]
    last = name.rsplit("/", 1)[-1]
    return last.split(":", 1)[0]


def parse_metadata_block(text: str) -> dict[str, str]:
    """Read the build's metadata block (``Image tag: …`` and friends) from a log; {} when absent.

    When a key is printed more than once the last value wins (a retried step prints the block again).
    """
    found: dict[str, str] = {}
    for raw in text.splitlines():
        line = TIMESTAMP.sub("", raw)
        m = META_LINE.match(line)
        if not m:
            continue
        key = re.sub(r"[\s/-]+", "_", m.group(1).strip().lower())
        if key in KNOWN_KEYS:
            found[key] = m.group(2)
    return found if "image_tag" in found else {}
