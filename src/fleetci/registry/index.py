"""Multi-arch tags: one OCI image index over the per-arch images of one build (``--index NAME:TAG``).

The seed's per-arch tags stay as they are (``x86/<image>:<tag>``, ``arm/<image>:<tag>``); the index is
pushed in addition, under ``NAME:TAG`` in the same registry project (``{image}`` and ``{tag}`` filled in).
Each platform comes from its image's config (architecture, os, variant). A registry only accepts an
index whose manifests exist in the index's own repository, so each per-arch manifest is copied there
first: its blobs are mounted across repositories (no bytes sent) and the manifest is PUT by digest.

Whichever arch is pushed first gets an index of one platform; the next arch's push rebuilds it with
both, so a daemon that syncs both arches of a build converges on the full index.

Only a push that verified its own arch's tag indexes: the plan's arch entry must be the manifest this
sync pushed or found identical (``push-state.json``), so a push that left a different image's tag alone
builds no index. The other arches' entries are what their per-arch tags hold (pushed and verified by
their own sync; this one cannot check them). Two arches indexing at once race read-then-write: after
its PUT each push reads the per-arch tags again and PUTs again (a few times at most) until the index
covers every arch it finds, so the last writer's index has both.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fleetci.errors import FleetciError, UsageError
from fleetci.registry.archive import INDEX_TYPES, OCI_INDEX
from fleetci.registry.oci import RegistryClient
from fleetci.registry.plan import UploadPlan
from fleetci.registry.tags import ARCH_DIRS, check_repository, check_tag

Log = Callable[[str], None]
PLATFORM_KEYS = ("architecture", "os", "variant", "os.version")
INDEX_ROUNDS = 5  # PUTs of one index at most while another arch's push races it


@dataclass(frozen=True)
class IndexRef:
    image: str  # the image name (presto-coordinator)
    repository: str  # inside the registry project
    tag: str

    def __str__(self) -> str:
        return f"{self.repository}:{self.tag}"


def index_refs(plan: UploadPlan, template: str) -> list[IndexRef]:
    """The index of each image of ``plan`` under ``template``; usage errors before anything is pushed."""
    images = sorted({img.repository.split("/", 1)[-1] for img in plan.images})
    if len(images) > 1 and "{image}" not in template:
        raise UsageError(
            f"--index {template!r}: the build has {len(images)} images ({', '.join(images)}); "
            "put {image} in NAME so each gets its own index"
        )
    refs = []
    for image in images:
        text = template.replace("{image}", image).replace("{tag}", plan.gitlab_tag)
        name, _, tag = text.rpartition(":")
        refs.append(IndexRef(image, check_repository(name.strip("/"), "--index name"), check_tag(tag)))
    return refs


def _platform(config: bytes, where: str) -> dict[str, Any]:
    try:
        doc = json.loads(config)
    except ValueError:
        raise FleetciError(f"the image config of {where} is not JSON") from None
    platform = {k: doc[k] for k in PLATFORM_KEYS if isinstance(doc, dict) and isinstance(doc.get(k), str)}
    if "architecture" not in platform or "os" not in platform:
        raise FleetciError(f"the image config of {where} names no architecture/os")
    return platform


def _entries(
    client: RegistryClient, project: str, plan: UploadPlan, ref: IndexRef, log: Log
) -> list[dict[str, Any]]:
    """One index entry per arch whose ``<arch>/<image>:<build tag>`` holds an image manifest."""
    dest = f"{project}/{ref.repository}"
    entries: list[dict[str, Any]] = []
    for arch_dir in dict.fromkeys(ARCH_DIRS.values()):
        src = f"{project}/{arch_dir}/{ref.image}"
        got = client.get_manifest(src, plan.gitlab_tag, push=True)
        if got is None:
            continue
        data, media_type, _ = got
        where = f"{src}:{plan.gitlab_tag}"
        if media_type in INDEX_TYPES:
            log(f"{where} is itself an index; not nested in {dest}:{ref.tag}")
            continue
        try:
            doc = json.loads(data)
            config_digest = str(doc["config"]["digest"])
            blob_digests = [config_digest, *(str(layer["digest"]) for layer in doc.get("layers") or [])]
        except (ValueError, KeyError, TypeError):
            raise FleetciError(f"{where} is not an image manifest") from None
        platform = _platform(client.get_blob(src, config_digest), where)
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        if src != dest:
            for blob in blob_digests:
                if not client.mount_blob(dest, blob, src):
                    raise FleetciError(f"registry would not mount {blob[:19]} from {src} into {dest}")
            client.put_manifest(dest, digest, data, media_type)
        entries.append(
            {"mediaType": media_type, "digest": digest, "size": len(data), "platform": platform, "src": src}
        )
    return entries


def push_index(
    client: RegistryClient,
    project: str,
    plan: UploadPlan,
    ref: IndexRef,
    log: Log,
    verified: str,
) -> str | None:
    """Push the index ``ref`` over every arch's ``<arch>/<image>:<build tag>`` found; its digest.

    ``verified`` is the manifest digest this sync pushed (or found identical) for the plan's own arch;
    when that tag now holds anything else, no index is pushed (None).
    """
    dest = f"{project}/{ref.repository}"
    own = f"{project}/{plan.arch_dir}/{ref.image}"
    pushed: list[str] = []
    if not verified:
        log(f"{own}:{plan.gitlab_tag} was not pushed or verified by this push; {dest}:{ref.tag} not indexed")
        return None
    for _ in range(INDEX_ROUNDS):
        entries = _entries(client, project, plan, ref, log)
        mine = [e for e in entries if e["src"] == own]
        if not mine or mine[0]["digest"] != verified:
            log(
                f"{own}:{plan.gitlab_tag} does not hold the image this push verified ({verified[:19]}); "
                f"{dest}:{ref.tag} not indexed"
            )
            return None
        digests = [e["digest"] for e in entries]
        if digests == pushed:
            break  # the per-arch tags did not move since our PUT: the index covers them
        for e in entries:
            del e["src"]
        index = json.dumps(
            {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}, separators=(",", ":")
        ).encode()
        client.put_manifest(dest, ref.tag, index, OCI_INDEX)
        pushed = digests
    else:
        log(f"{dest}:{ref.tag}: the per-arch tags kept changing; the index may miss one")
    digest = "sha256:" + hashlib.sha256(index).hexdigest()
    platforms = ", ".join(e["platform"]["architecture"] for e in entries)
    log(f"{dest}:{ref.tag} -> index {digest[:19]} ({platforms})")
    return digest
