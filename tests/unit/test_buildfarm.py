"""Fast checks of recipes, the dependency graph, keys, settings and the ``fleetci build`` CLI's bad input."""

from __future__ import annotations

import functools
import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from fleetci.buildfarm import keys
from fleetci.buildfarm.master import valid_artifact_name
from fleetci.buildfarm.recipe import (
    check_graph,
    critical_path,
    discover,
    levels,
    pack_source,
    parse_recipe,
    partitions,
    priorities,
    unpack_source,
)
from fleetci.buildfarm.settings import client_settings, master_settings, worker_settings
from fleetci.errors import FleetciError, UsageError
from support import RunCli, clean_env, one_line_error

DEAD = "http://127.0.0.1:9"  # nothing listens on the discard port


def recipe(root: Path, name: str, depends: list[str] | None = None, **extra: object) -> Path:
    d = root / name
    d.mkdir(parents=True)
    data = {
        "name": name,
        "version": "1.0",
        "build": f"echo {name} > {name}.txt",
        "artifacts": [f"{name}.txt"],
    }
    if depends:
        data["depends"] = depends
    data.update(extra)
    (d / "recipe.yml").write_text(yaml.safe_dump(data), encoding="utf-8")
    return d


def test_levels_priorities_and_critical_path(tmp_path: Path) -> None:
    recipe(tmp_path, "a")
    recipe(tmp_path, "b", ["a"])
    recipe(tmp_path, "c", ["a"], estimate_s=5)
    recipe(tmp_path, "d", ["b", "c"])
    recipe(tmp_path, "e")
    graph = check_graph(discover([tmp_path]))
    assert levels(graph) == [["a", "e"], ["b", "c"], ["d"]]
    cost = {"a": 1.0, "b": 1.0, "c": 5.0, "d": 1.0, "e": 1.0}
    prio = priorities(graph, cost)
    assert prio == {"a": 7.0, "b": 2.0, "c": 6.0, "d": 1.0, "e": 1.0}
    assert critical_path(graph, cost) == 7.0


def test_partitions_keep_dependencies_together_and_balance(tmp_path: Path) -> None:
    graph = {"a": (), "b": ("a",), "c": (), "d": ("c",), "e": (), "f": (), "g": ("f",), "h": ()}
    parts = partitions(graph, 3)
    assert sorted(x for p in parts for x in p) == sorted(graph)
    assert sorted(len(p) for p in parts) == [2, 3, 3]
    for p in parts:
        for name in p:
            assert all(dep in p for dep in graph[name]), (name, parts)
            # a dependency comes before its dependents in the printed order
            assert all(p.index(dep) < p.index(name) for dep in graph[name])
    with pytest.raises(UsageError):
        partitions(graph, 0)


def test_cycles_and_missing_dependencies_are_named(tmp_path: Path) -> None:
    recipe(tmp_path, "a", ["c"])
    recipe(tmp_path, "b", ["a"])
    recipe(tmp_path, "c", ["b"])
    with pytest.raises(FleetciError, match=r"dependency cycle: a -> c -> b -> a"):
        check_graph(discover([tmp_path]))
    other = tmp_path / "other"
    recipe(other, "x", ["nowhere"])
    with pytest.raises(FleetciError, match="depends on nowhere"):
        check_graph(discover([other]))
    assert check_graph(discover([other]), available={"nowhere"}) == {"x": ()}


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([], "must be a YAML mapping"),
        ({"name": "Bad Name", "version": "1", "build": "x", "artifacts": ["a"]}, "'name'"),
        ({"name": "a", "version": "", "build": "x", "artifacts": ["a"]}, "'version'"),
        ({"name": "a", "version": "1", "build": " ", "artifacts": ["a"]}, "'build'"),
        ({"name": "a", "version": "1", "build": "x", "artifacts": []}, "'artifacts'"),
        ({"name": "a", "version": "1", "build": "x", "artifacts": ["../up"]}, "inside the build"),
        ({"name": "a", "version": "1", "build": "x", "artifacts": ["a"], "depends": ["a"]}, "itself"),
        ({"name": "a", "version": "1", "build": "x", "artifacts": ["a"], "colour": 1}, "unknown"),
        ({"name": "a", "version": "1", "build": "x", "artifacts": ["a"], "timeout_s": 0}, "timeout_s"),
    ],
)
def test_recipe_validation(data: object, message: str) -> None:
    with pytest.raises(FleetciError, match=message):
        parse_recipe(data, "recipe.yml")


def test_numeric_version_is_read_as_text() -> None:
    r = parse_recipe({"name": "a", "version": 2.1, "build": "x", "artifacts": "a.txt"}, "r")
    assert (r.version, r.artifacts) == ("2.1", ("a.txt",))


def test_source_archive_round_trip_and_unsafe_archives(tmp_path: Path) -> None:
    d = recipe(tmp_path / "src", "a")
    (d / "sub").mkdir()
    (d / "sub" / "data.bin").write_bytes(b"\0" * 10)
    (d / ".git").mkdir()
    (d / ".git" / "HEAD").write_text("x")
    out = tmp_path / "out"
    out.mkdir()
    unpack_source(pack_source(d), out)
    assert (out / "sub" / "data.bin").read_bytes() == b"\0" * 10
    assert not (out / ".git").exists()

    import io
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        info = tarfile.TarInfo("../escape.txt")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    with pytest.raises(FleetciError, match="unusable"):
        unpack_source(buf.getvalue(), out)
    assert not (tmp_path / "escape.txt").exists()
    with pytest.raises(FleetciError):
        unpack_source(b"not a tarball", out)


@pytest.mark.parametrize(
    ("name", "ok"),
    [
        ("pkg-1.0.tar.gz", True),
        ("a", True),
        ("../etc/passwd", False),
        ("..", False),
        (".hidden", False),
        ("a/b", False),
        ("a\\b", False),
        ("a\0b", False),
        ("", False),
        ("x" * 201, False),
    ],
)
def test_artifact_names(name: str, ok: bool) -> None:
    assert valid_artifact_name(name) is ok


def test_keys_sign_verify_and_persist(tmp_path: Path) -> None:
    key = keys.load_or_create_key(tmp_path / "k.pem")
    assert (tmp_path / "k.pem").stat().st_mode & 0o777 == 0o600
    again = keys.load_or_create_key(tmp_path / "k.pem")
    assert keys.public_b64(key) == keys.public_b64(again)
    msg = keys.artifact_message("pkg", "f.txt", "ab" * 32)
    sig = keys.sign(key, msg)
    assert keys.verify(keys.public_b64(key), msg, sig)
    assert not keys.verify(keys.public_b64(key), keys.artifact_message("pkg", "g.txt", "ab" * 32), sig)
    other = keys.load_or_create_key(tmp_path / "other.pem")
    assert not keys.verify(keys.public_b64(other), msg, sig)
    assert not keys.verify(keys.public_b64(key), msg, "not base64!")
    (tmp_path / "bad.pem").write_text("garbage")
    with pytest.raises(FleetciError, match="not a PEM"):
        keys.load_or_create_key(tmp_path / "bad.pem")
    token = keys.new_token("fcw")
    assert keys.token_matches(token, keys.token_hash(token))
    assert not keys.token_matches(token + "x", keys.token_hash(token))


def test_settings_precedence() -> None:
    env = {"FLEETCI_BUILD_PORT": "9400", "FLEETCI_BUILD_HEARTBEAT_TTL": "7", "FLEETCI_BUILD_TOKEN": "t"}
    config = {"build": {"port": 9500, "heartbeat_ttl": 9, "max_attempts": 5}}
    s = master_settings({"port": "9600"}, config, env)
    assert (s.port, s.heartbeat_ttl, s.max_attempts, s.admin_token) == (9600, 7.0, 5, "t")
    assert master_settings({}, None, {}).heartbeat_ttl == 60.0
    with pytest.raises(UsageError, match="heartbeat-ttl"):
        master_settings({"heartbeat_ttl": "-1"}, None, {})
    with pytest.raises(UsageError, match="no master URL"):
        client_settings({}, None, {"FLEETCI_BUILD_TOKEN": "t"})
    with pytest.raises(UsageError, match="no admin token"):
        client_settings({"master": "http://127.0.0.1:1"}, None, {})
    with pytest.raises(UsageError, match="http://"):
        client_settings({"master": "ftp://x"}, None, {"FLEETCI_BUILD_TOKEN": "t"})
    with pytest.raises(UsageError, match="no join token"):
        worker_settings({"master": "http://127.0.0.1:1"}, None, {})
    w = worker_settings({}, {"build": {"master": "http://m:1/"}}, {"FLEETCI_BUILD_JOIN_TOKEN": "j"})
    assert (w.master, w.join_token) == ("http://m:1", "j")


@pytest.fixture
def build(fleetci: RunCli) -> RunCli:
    """``fleetci build ARGS…`` in this process (conftest's ``fleetci``)."""
    return functools.partial(fleetci, "build")


def test_tree_prints_levels_and_partitions(tmp_path: Path, build: RunCli) -> None:
    recipe(tmp_path, "a")
    recipe(tmp_path, "b", ["a"])
    recipe(tmp_path, "c")
    proc = build("tree", str(tmp_path), "--partitions", "2")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        "level 0: a c",
        "level 1: b",
        "partition 1 (2 packages, cost 2): a b",
        "partition 2 (1 packages, cost 1): c",
    ]


def test_tree_rejects_a_cycle_and_a_missing_dependency(tmp_path: Path, build: RunCli) -> None:
    recipe(tmp_path / "cyc", "a", ["b"])
    recipe(tmp_path / "cyc", "b", ["a"])
    assert "dependency cycle: a -> b -> a" in one_line_error(build("tree", str(tmp_path / "cyc")))
    recipe(tmp_path / "miss", "a", ["ghost"])
    err = one_line_error(build("tree", str(tmp_path / "miss")))
    assert "depends on ghost" in err


def test_tree_rejects_corrupt_and_missing_recipes(tmp_path: Path, build: RunCli) -> None:
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "recipe.yml").write_text("name: [unclosed\n")
    assert "not valid YAML" in one_line_error(build("tree", str(bad)))
    assert "does not exist" in one_line_error(build("tree", str(tmp_path / "nope")))
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "no recipe.yml" in one_line_error(build("tree", str(empty)))
    proc = build("tree", str(bad), "--partitions", "x")
    assert (
        proc.returncode == 2
        and "--partitions: expected a whole number between 1 and 10000" in one_line_error(proc)
    )


def test_submit_status_and_worker_need_credentials_and_a_reachable_master(
    tmp_path: Path, build: RunCli
) -> None:
    pkg = recipe(tmp_path, "a")
    err = one_line_error(build("submit", str(pkg), "--master", DEAD))
    assert "no admin token" in err
    env = clean_env(FLEETCI_BUILD_TOKEN="secret-admin-token")
    proc = build("submit", str(pkg), "--master", DEAD, env=env)
    err = one_line_error(proc)
    assert "cannot reach the build master" in err and "secret-admin-token" not in proc.stderr
    assert "cannot reach" in one_line_error(build("status", "--master", DEAD, env=env))
    assert "no master URL" in one_line_error(build("status", env=env))
    assert "no join token" in one_line_error(build("worker", "--master", DEAD))
    wenv = clean_env(FLEETCI_BUILD_JOIN_TOKEN="j", FLEETCI_BUILD_WORK_DIR=str(tmp_path / "w"))
    proc = build("worker", "--master", DEAD, env=wenv)
    assert "cannot reach the build master" in one_line_error(proc)
    assert "cannot read the repository" in one_line_error(build("verify", "--master", DEAD))
    proc = build("submit", str(pkg), "--master", DEAD, "--bogus", env=env)
    assert proc.returncode == 2 and "unrecognized arguments" in one_line_error(proc)


def test_master_refuses_a_corrupt_state_database_or_key_without_touching_it(
    tmp_path: Path, build: RunCli
) -> None:
    env = clean_env(FLEETCI_BUILD_TOKEN="a", FLEETCI_BUILD_JOIN_TOKEN="j")
    state = tmp_path / "state"
    state.mkdir()
    (state / "state.db").write_bytes(b"this is not a database" * 100)
    proc = build("master", "--port", "0", "--state-dir", str(state), env=env)
    assert "state database" in one_line_error(proc)
    assert (state / "state.db").read_bytes() == b"this is not a database" * 100
    other = tmp_path / "other"
    other.mkdir()
    (other / "master.key").write_text("-----BEGIN PRIVATE KEY-----\ngarbage\n")
    proc = build("master", "--port", "0", "--state-dir", str(other), env=env)
    assert "not a PEM private key" in one_line_error(proc)
    proc = build("master", "--heartbeat-ttl", "0", "--state-dir", str(other), env=env)
    assert proc.returncode == 2 and "--heartbeat-ttl" in one_line_error(proc)


def _master_with_a_finished_job(state: Path, tmp_path: Path) -> tuple[Any, int, Path, list[dict[str, Any]]]:
    """A master (in-process) whose worker uploaded one artifact of job ``a``; the result is not applied."""
    from fleetci.buildfarm.master import Master
    from fleetci.buildfarm.settings import MasterSettings

    m = Master(MasterSettings(port=0, state_dir=state, admin_token="a" * 20, join_token="j" * 20))
    key = keys.load_or_create_key(tmp_path / "w.pem")
    m.store.add_worker("w-1", "w", keys.token_hash("w-1.x"), keys.public_b64(key))
    r = parse_recipe({"name": "a", "version": "1", "build": "true", "artifacts": ["a.pkg"]}, "r")
    m.store.submit([(r, "0" * 64)])
    job = m.store.claim("w-1")
    assert job is not None
    jid = int(job["id"])
    stage = m._stage("w-1", jid)
    stage.mkdir(parents=True)
    (stage / "a.pkg").write_bytes(b"artifact")
    sha = hashlib.sha256(b"artifact").hexdigest()
    sig = keys.sign(key, keys.artifact_message("a", "a.pkg", sha))
    m.store.record_upload(jid, "a.pkg", sha, 8, sig)
    files = [{"name": "a.pkg", "path": "a/1-1/a.pkg", "sha256": sha, "size": 8, "signature": sig}]
    return m, jid, stage, files


def test_a_result_committed_before_a_crash_is_finished_on_restart(tmp_path: Path) -> None:
    from fleetci.buildfarm.master import Master

    state = tmp_path / "state"
    m, jid, stage, files = _master_with_a_finished_job(state, tmp_path)
    job = m.store.job(jid)
    # The transaction commits (job done, package recorded, file moves journaled) and the master dies
    # before it moves a single file.
    m.store.finish(job, True, 1.0, "log", None, files, stage=str(stage.relative_to(state)))
    settings = m.settings
    m.store.close()
    assert (stage / "a.pkg").exists() and not (state / "repo" / "a").exists()

    again = Master(settings)
    assert (state / "repo" / "a" / "1-1" / "a.pkg").read_bytes() == b"artifact"
    assert not stage.exists()
    assert again.store.pending_applies() == []
    index = json.loads(again.index_bytes)
    assert index["packages"]["a"]["files"] == files
    assert keys.verify(again.public_key, again.index_bytes, again.index_sig)
    again.store.close()
    # Recovery is idempotent: a third start finds nothing to do and changes nothing.
    third = Master(settings)
    assert (state / "repo" / "a" / "1-1" / "a.pkg").read_bytes() == b"artifact"
    assert json.loads(third.index_bytes)["packages"]["a"]["files"] == files
    third.store.close()


def test_a_crash_before_the_commit_changes_nothing_and_the_retry_works(tmp_path: Path) -> None:
    from fleetci.buildfarm.master import Master

    state = tmp_path / "state"
    m, jid, stage, files = _master_with_a_finished_job(state, tmp_path)
    settings = m.settings
    m.store.close()  # died while handling the result, before its transaction

    again = Master(settings)
    job = again.store.job(jid)
    assert job["state"] == "running" and (stage / "a.pkg").exists()  # the staged upload is kept
    assert json.loads(again.index_bytes)["packages"] == {}
    assert not (state / "repo" / "a").exists()
    # The worker's retried result then applies as if nothing had happened.
    again.store.finish(job, True, 1.0, "log", None, files, stage=str(stage.relative_to(state)))
    again._publish(again.store.pending_applies()[0])
    assert (state / "repo" / "a" / "1-1" / "a.pkg").read_bytes() == b"artifact"
    again.store.close()


def test_a_stray_file_where_a_package_directory_belongs_does_not_stop_the_start(tmp_path: Path) -> None:
    """A committed result still to publish, and a regular file named like its package in ``repo/``."""
    from fleetci.buildfarm.master import Master

    state = tmp_path / "state"
    m, jid, stage, files = _master_with_a_finished_job(state, tmp_path)
    m.store.finish(m.store.job(jid), True, 1.0, "log", None, files, stage=str(stage.relative_to(state)))
    settings = m.settings
    m.store.close()
    (state / "repo" / "a").write_text("not a directory")

    again = Master(settings)  # used to stop at NotADirectoryError
    assert (state / "repo" / "a" / "1-1" / "a.pkg").read_bytes() == b"artifact"
    assert again.store.pending_applies() == [] and not stage.exists()
    again.store.close()


def test_recovery_never_follows_a_symlink_out_of_the_state_dir(tmp_path: Path) -> None:
    from fleetci.buildfarm.master import Master

    state = tmp_path / "state"
    m, jid, stage, files = _master_with_a_finished_job(state, tmp_path)
    m.store.finish(m.store.job(jid), True, 1.0, "log", None, files, stage=str(stage.relative_to(state)))
    m._publish(m.store.pending_applies()[0])
    settings = m.settings
    m.store.close()
    outside = tmp_path / "outside"
    for name in ("precious", "7"):
        (outside / name).mkdir(parents=True)
        (outside / name / "data").write_text("keep me")
    shutil.rmtree(state / "repo" / "a")
    (state / "repo" / "a").symlink_to(outside)  # named like a package: its "releases" would be pruned
    (state / "staging" / "w-9").symlink_to(outside)  # named like a worker: its "jobs" would be dropped

    Master(settings).store.close()
    assert sorted(str(p.relative_to(outside)) for p in outside.rglob("data")) == ["7/data", "precious/data"]
    assert not (state / "repo" / "a").is_symlink() and not (state / "staging" / "w-9").is_symlink()


def test_master_state_is_private_and_old_wide_files_are_tightened(tmp_path: Path) -> None:
    from fleetci.buildfarm.master import Master
    from fleetci.buildfarm.settings import MasterSettings

    state = tmp_path / "state"
    (state / "repo" / "gone" / "1-1").mkdir(parents=True)  # a package the database no longer knows
    (state / "repo" / "index.json").write_text("{}")  # the index where an older layout kept it
    for name in ("admin.token", "join.token"):
        (state / name).write_text(f"old-{name}\n")
        (state / name).chmod(0o644)
    state.chmod(0o755)
    m = Master(MasterSettings(port=0, state_dir=state))
    m.store.close()
    assert not (state / "repo" / "gone").exists() and not (state / "repo" / "index.json").exists()
    for path in [state, *state.rglob("*")]:
        mode = path.stat().st_mode & 0o777
        assert mode == (0o700 if path.is_dir() else 0o600), (path, oct(mode))
    assert (state / "admin.token").read_text() == "old-admin.token\n"  # tightened, not replaced


def test_worker_work_dir_is_private(tmp_path: Path) -> None:
    from fleetci.buildfarm.settings import WorkerSettings
    from fleetci.buildfarm.worker import Worker

    work = tmp_path / "w"
    work.mkdir(mode=0o755)
    w = Worker(WorkerSettings(master="http://127.0.0.1:9", join_token="j", name="n", work_dir=work))
    w.api.close()
    for path in [work, *work.rglob("*")]:
        mode = path.stat().st_mode & 0o777
        assert mode == (0o700 if path.is_dir() else 0o600), (path, oct(mode))


KEY = b"A" * 43 + b"="  # a well-formed public key: the name is what these bodies get wrong


@pytest.mark.parametrize(
    ("op", "body", "needle"),
    [
        ("result", b'{"ok": true, "duration_s": "nan"}', "duration_s"),
        ("result", b'{"ok": true, "duration_s": NaN}', "NaN"),
        ("result", b'{"ok": true, "artifacts": [1, "a"]}', "artifacts.0"),
        ("result", b'{"ok": true, "artifacts": ["a..b"]}', "artifacts.0"),
        ("heartbeat", b'{"jobs": [100000000000000000000000]}', "jobs.0"),
        ("submit", b"[" * 5000 + b"]" * 5000, "nested"),
        ("submit", b'{"packages": [{"recipe": {"name": "Index"}, "source": ""}]}', "packages.0.recipe"),
        ("register", b'{"public_key": "' + KEY + b'", "name": "two\\nlines"}', "name"),
        # JSON Schema's patterns are ECMA-262's: "$" is the end of the text, not "before a final newline"
        ("register", b'{"public_key": "' + KEY + b'", "name": "evil\\n"}', "name"),
        ("result", b'{"ok": true, "artifacts": ["a.deb\\n"]}', "artifacts.0"),
        (
            "submit",
            b'{"packages": [{"recipe": {"name": "x\\n", "version": "1", "build": "b", "artifacts": ["a"]},'
            b' "source": ""}]}',
            "packages.0.recipe.name",
        ),
    ],
)
def test_request_bodies_are_checked_against_the_published_schemas(op: str, body: bytes, needle: str) -> None:
    from fleetci.buildfarm import api

    with pytest.raises(api.ApiError, match=needle) as caught:
        api.parse_body(op, body)
    assert caught.value.status == 400 and "\n" not in str(caught.value)


def test_heartbeat_body_is_optional_and_valid_bodies_pass() -> None:
    from fleetci.buildfarm import api

    assert api.parse_body("heartbeat", b"") == {}
    assert api.parse_body("heartbeat", b'{"jobs": [1, 2]}') == {"jobs": [1, 2]}
    assert api.parse_body("result", b'{"ok": false, "error": null}')["ok"] is False
    with pytest.raises(api.ApiError, match="no such job"):
        api.path_id("result", "job", str(10**23))


@pytest.mark.parametrize(
    ("pattern", "python"),
    [
        ("^a$", r"^a\Z"),
        (r"^a\$$", r"^a\$\Z"),  # an escaped "$" is a dollar sign
        ("^[$]$", r"^[$]\Z"),  # so is one in a class
        ("^[]$]$", r"^[]$]\Z"),  # "]" first in a class is a literal: the class goes on
        ("^[^]$]$", r"^[^]$]\Z"),
        ("^(a$|b$)", r"^(a\Z|b\Z)"),
        ("^abc", "^abc"),
    ],
)
def test_schema_patterns_get_ecma_end_anchors(pattern: str, python: str) -> None:
    from fleetci.buildfarm import api

    assert api.ecma_regex(pattern) == python
