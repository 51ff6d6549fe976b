"""``--engine docker``: login, load, tag and push through a docker daemon (the docker SDK)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from fleetci.errors import FleetciError
from fleetci.registry.oci import RegistryClient
from fleetci.registry.plan import STATE_FILE, PushRow, UploadPlan
from fleetci.registry.settings import RegistrySettings
from fleetci.registry.state import PushState


def docker_push(
    settings: RegistrySettings,
    directory: Path,
    plan: UploadPlan,
    *,
    force: bool,
    retag_as_latest: bool,
    verbose: bool,
    skip_login: bool,
    log: Callable[[str], None],
) -> list[PushRow]:
    import docker
    from docker.errors import APIError, DockerException, ImageNotFound

    try:
        client = (
            docker.DockerClient(base_url=settings.docker_host) if settings.docker_host else docker.from_env()
        )
        client.ping()
    except DockerException as exc:
        raise FleetciError(
            f"docker daemon not reachable ({settings.docker_host or 'DOCKER_HOST/default socket'}): {exc}"
        ) from exc
    state = PushState(directory / STATE_FILE)
    rows: list[PushRow] = []
    host = settings.registry_host
    try:
        if not skip_login and settings.registry_password:
            try:
                client.login(
                    settings.registry_username or "oauth2",
                    settings.registry_password,
                    registry=host,
                    reauth=True,
                )
            except APIError as exc:
                raise FleetciError(f"docker login to {host} failed: {exc.explanation or exc}") from exc
        loaded: set[str] = set()
        with RegistryClient.from_settings(settings, skip_login) as reg:
            for img in plan.images:
                repo = f"{settings.registry_project}/{img.repository}"
                tag = img.tag
                ref = f"{repo}:{tag}"
                if not force and reg.manifest_digest(repo, tag) is not None:
                    log(f"{ref} already present; skipped (--force pushes again)")
                    rows.append(PushRow(ref, "present"))
                    state.mark_verified(ref, str(reg.manifest_digest(repo, tag)))
                    continue
                tarball = img.tarball
                if tarball not in loaded:
                    log(f"docker load {tarball}")
                    with (directory / tarball).open("rb") as fh:
                        client.images.load(fh)
                    loaded.add(tarball)
                try:
                    image = client.images.get(img.source)
                except ImageNotFound as exc:
                    raise FleetciError(f"docker load of {tarball} did not produce {img.source}") from exc
                target = f"{host}/{repo}"
                tags = [tag, "latest"] if retag_as_latest else [tag]
                for t in tags:
                    image.tag(target, t)
                    for line in client.api.push(target, t, stream=True, decode=True):
                        if "error" in line:
                            raise FleetciError(f"docker push {target}:{t} failed: {line['error']}")
                        if verbose and line.get("status"):
                            log(f"{target}:{t} {line.get('id', '')} {line['status']}")
                digest = reg.manifest_digest(repo, tag)
                if digest is None:
                    raise FleetciError(f"{ref} is not in the registry after docker push")
                state.mark_verified(ref, digest)
                log(f"{ref} pushed with docker ({digest})")
                rows.append(PushRow(ref, "pushed (docker)"))
    except DockerException as exc:
        raise FleetciError(f"docker failed: {exc}") from exc
    finally:
        client.close()
    return rows
