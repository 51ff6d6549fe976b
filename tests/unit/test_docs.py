"""The docs are shaped like the code: generated tables are current, links resolve, actions keep the rule.

* every ``<!-- settings: … -->``, ``<!-- action-inputs: … -->`` and ``<!-- bench: … -->`` block of
  ``README.md`` and ``docs/*.md`` is what ``python -m fleetci.docsgen`` would write;
* every capability's settings module has a SettingTable and every config section has a docs table;
* every relative link (and ``#anchor``) in ``README.md`` and ``docs/*.md`` resolves;
* an action input that feeds a fleetci setting defaults to ``""``, so flag > env > config > default holds;
* the README shows the two set-up commands that the scripts and ``.ci/run`` define.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from fleetci import docsgen
from fleetci.config import SECTIONS, Setting, SettingTable, parse_port

REPO_ROOT = Path(__file__).resolve().parents[2]


DOCS = docsgen.doc_files(REPO_ROOT)


ACTION_FILES = sorted([REPO_ROOT / "action.yml", *REPO_ROOT.glob("actions/*/action.yml")])


FENCE = re.compile(r"^(```|~~~).*?^\1", re.S | re.M)


CODE_SPAN = re.compile(r"`[^`\n]*`")


LINK = re.compile(r"\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")


HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.M)


INPUT_REF = re.compile(r"\binputs\.([A-Za-z0-9_-]+)")


def rel(path: Path) -> str:
    return str(path.relative_to(REPO_ROOT))


@pytest.fixture(scope="module")
def tables() -> docsgen.Tables:
    return docsgen.load_tables()


def test_generated_blocks_are_up_to_date(tables: docsgen.Tables) -> None:
    report = docsgen.generate(REPO_ROOT, check=True, tables=tables)
    assert not report.stale, (
        f"out of date: {', '.join(rel(p) for p in report.stale)} — run python -m fleetci.docsgen"
    )


def test_every_settings_module_declares_a_table(tables: docsgen.Tables) -> None:
    assert tables.missing == (), f"no SettingTable in {', '.join(tables.missing)}"
    assert {t.section for t in tables.tables} == set(SECTIONS)


def test_every_config_section_has_a_settings_table_in_the_docs() -> None:
    text = "\n".join(p.read_text(encoding="utf-8") for p in DOCS)
    blocks = {m["arg"].strip() for m in docsgen.BLOCK.finditer(text) if m["kind"] == "settings"}
    assert set(SECTIONS) <= blocks, f"no <!-- settings: … --> block for {sorted(set(SECTIONS) - blocks)}"


class DemoOptions(SettingTable):
    section = "demo"
    port = Setting(8080, parse_port, env=("DEMO_PORT",), help="a port | with a pipe")
    secret = Setting("", str, env=("DEMO_SECRET",), help="never a flag", flag=False)


def write_fixture(root: Path) -> Path:
    (root / "docs").mkdir()
    (root / "actions" / "demo").mkdir(parents=True)
    (root / "benchmarks" / "results").mkdir(parents=True)
    (root / "actions" / "demo" / "action.yml").write_text(
        yaml.safe_dump(
            {
                "name": "demo",
                "inputs": {
                    "port": {"description": 'Port (DEMO_PORT); empty means "<runner.temp>".', "default": ""},
                    "mode": {"description": "worker | submit", "required": True},
                },
            }
        )
    )
    (root / "benchmarks" / "results" / "demo.json").write_text(
        '{"ratio": 1.25, "nested": {"n": 3}, "targets": {"ratio_max": 2.0}}'
    )
    doc = root / "docs" / "demo.md"
    doc.write_text(
        "# Demo\n\n<!-- settings: DemoOptions -->\nstale\n<!-- /settings -->\n\n"
        "<!-- action-inputs: demo -->\n<!-- /action-inputs -->\n\n"
        "<!-- bench: demo.json ratio nested.n missing -->\n<!-- /bench -->\n"
    )
    return doc


def test_docsgen_fills_settings_inputs_and_bench_blocks(tmp_path: Path) -> None:
    doc = write_fixture(tmp_path)
    tables = docsgen.Tables((DemoOptions,))
    assert docsgen.generate(tmp_path, check=True, tables=tables).stale == [doc]
    assert "stale" in doc.read_text()  # --check writes nothing
    docsgen.generate(tmp_path, tables=tables)
    text = doc.read_text()
    assert DemoOptions.markdown() in text
    assert "| `demo.port` | `--port` | `DEMO_PORT` | `8080` | a port \\| with a pipe |" in text
    assert "| `demo.secret` | – | `DEMO_SECRET` | `none` | never a flag |" in text
    assert '| `port` | no | `""` | Port (DEMO_PORT); empty means "&lt;runner.temp>". |' in text
    assert "| `mode` | yes | – | worker \\| submit |" in text
    assert "| `ratio` | `1.25` | <= 2.0 |" in text
    assert "| `nested.n` | `3` | – |" in text
    assert "| `missing` | – | – |" in text
    assert "Source: [benchmarks/results/demo.json](../benchmarks/results/demo.json)." in text
    assert docsgen.generate(tmp_path, check=True, tables=tables).stale == []


def test_docsgen_check_names_the_stale_file_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    doc = write_fixture(tmp_path)
    doc.write_text(doc.read_text().replace("<!-- settings: DemoOptions -->\nstale\n<!-- /settings -->\n", ""))
    assert docsgen.main(["--check", "--root", str(tmp_path)]) == 1
    err = capsys.readouterr().err.splitlines()
    assert [line for line in err if "out of date" in line] == [
        "docsgen: out of date: docs/demo.md (run python -m fleetci.docsgen)"
    ]
    assert docsgen.main(["--root", str(tmp_path)]) == 0
    assert docsgen.main(["--check", "--root", str(tmp_path)]) == 0


@pytest.mark.parametrize(
    ("block", "message"),
    [
        ("<!-- settings: nosuch -->\n<!-- /settings -->\n", "unknown settings block 'nosuch'"),
        ("<!-- action-inputs: nosuch -->\n<!-- /action-inputs -->\n", "unknown action 'nosuch'"),
        (
            "<!-- bench: nosuch.json ratio -->\n<!-- /bench -->\n",
            "cannot read benchmarks/results/nosuch.json",
        ),
        ("<!-- bench: demo.json ratio -->\nno end\n", "is not closed"),
    ],
)
def test_docsgen_refuses_a_block_it_cannot_fill(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], block: str, message: str
) -> None:
    write_fixture(tmp_path)
    (tmp_path / "docs" / "demo.md").write_text(block)
    assert docsgen.main(["--check", "--root", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("docsgen: error: docs/demo.md: ") and message in err[-1], err


def prose(text: str) -> str:
    """Markdown without fenced blocks and code spans: links inside code are not links."""
    return CODE_SPAN.sub("", FENCE.sub("", text))


def slug(heading: str) -> str:
    """GitHub's heading anchor: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    found = set()
    for heading in HEADING.findall(FENCE.sub("", path.read_text(encoding="utf-8"))):
        base = slug(heading)
        n = seen.get(base, 0)
        seen[base] = n + 1
        found.add(base if n == 0 else f"{base}-{n}")
    return found


def test_slug_follows_github() -> None:
    assert slug("Two commands (fresh Debian 12, as root)") == "two-commands-fresh-debian-12-as-root"
    assert slug("Install action (`fleetci/fleetci@v1`)") == "install-action-fleetcifleetciv1"
    assert slug("`fleetci bench cache --p2p`") == "fleetci-bench-cache---p2p"


@pytest.mark.parametrize("doc", DOCS, ids=rel)
def test_relative_links_resolve(doc: Path) -> None:
    broken = []
    for target in LINK.findall(prose(doc.read_text(encoding="utf-8"))):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):  # https:, mailto:
            continue
        path_part, _, anchor = target.partition("#")
        dest = (doc.parent / path_part).resolve() if path_part else doc
        if not dest.exists():
            broken.append(f"{target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target}: no heading #{anchor} in {rel(dest)}")
    assert not broken, f"{rel(doc)}: " + "; ".join(broken)


def test_each_capability_page_is_linked_from_the_readme() -> None:
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    pages = sorted(p.name for p in (REPO_ROOT / "docs").glob("*.md"))
    assert {"cache.md", "install.md", "multiarch.md", "registry.md", "buildfarm.md", "emulate.md"} <= set(
        pages
    )
    missing = [p for p in pages if f"(docs/{p}" not in readme]
    assert not missing, f"README.md does not link docs/{', docs/'.join(missing)}"


def setting_envs(tables: docsgen.Tables) -> dict[str, Setting[Any]]:
    return {env: s for t in tables.tables for s in t.settings for env in s.env}


def inputs_feeding_settings(action: dict[str, Any], envs: dict[str, Setting[Any]]) -> dict[str, str]:
    """input name -> the setting's environment name it feeds (a step's env, or named in its description)."""
    fed: dict[str, str] = {}
    for step in (action.get("runs") or {}).get("steps") or []:
        for var, value in (step.get("env") or {}).items():
            if var in envs:
                for name in INPUT_REF.findall(str(value)):
                    fed.setdefault(name, var)
    for name, spec in (action.get("inputs") or {}).items():
        for var in re.findall(r"\(([A-Z][A-Z0-9_]+)\)", str((spec or {}).get("description", ""))):
            if var in envs:
                fed.setdefault(name, var)
    return fed


@pytest.mark.parametrize("path", ACTION_FILES, ids=rel)
def test_action_inputs_that_feed_a_setting_default_to_empty(path: Path, tables: docsgen.Tables) -> None:
    """A non-empty default would be passed on and win over the config file, which then never applies."""
    action = yaml.safe_load(path.read_text(encoding="utf-8"))
    inputs = action.get("inputs") or {}
    envs = setting_envs(tables)
    wrong = [
        f"{name} (feeds ${var}) defaults to {inputs[name]['default']!r}"
        for name, var in sorted(inputs_feeding_settings(action, envs).items())
        if name in inputs and (inputs[name] or {}).get("default", "") != ""
    ]
    assert not wrong, f"{rel(path)}: " + "; ".join(wrong)


@pytest.mark.parametrize("path", ACTION_FILES, ids=rel)
def test_an_empty_input_leaves_the_jobs_own_variable_alone(path: Path, tables: docsgen.Tables) -> None:
    """A step's ``env:`` shadows the job's: ``VAR: ${{ inputs.x }}`` would blank a job-level ``VAR`` (e.g. the
    seed's ``CACHE_ENABLE_P2P``) whenever the input is left empty, so each one falls back to ``env.VAR``."""
    action = yaml.safe_load(path.read_text(encoding="utf-8"))
    envs = setting_envs(tables)
    wrong = [
        f"{var}: {value}"
        for step in (action.get("runs") or {}).get("steps") or []
        for var, value in (step.get("env") or {}).items()
        if var in envs
        and INPUT_REF.search(str(value))
        and not re.match(r"\$\{\{ inputs\.[a-z0-9-]+ \|\| env\." + var + r"\b", str(value))
    ]
    assert not wrong, f"{rel(path)}: " + "; ".join(wrong)


def test_the_input_check_sees_env_and_description_mappings() -> None:
    envs = {"DEMO_PORT": Setting(1, int, env=("DEMO_PORT",), help="x")}
    action = {
        "inputs": {"a": {"default": "1"}, "b": {"description": "B (DEMO_PORT)."}, "c": {"default": "x"}},
        "runs": {"steps": [{"env": {"DEMO_PORT": "${{ inputs.a || 'z' }}", "OTHER": "${{ inputs.c }}"}}]},
    }
    assert inputs_feeding_settings(action, envs) == {"a": "DEMO_PORT", "b": "DEMO_PORT"}


def setup_commands() -> list[str]:
    """``bash scripts/X.sh`` for each one-command script, and the test command ``.ci/run`` runs."""
    scripts = [
        f"bash {rel(p)}"
        for p in sorted((REPO_ROOT / "scripts").glob("*.sh"))
        if "One command, fresh machine" in p.read_text(encoding="utf-8")
    ]
    ci = re.findall(r"^bash (scripts/\S+\.sh)", (REPO_ROOT / ".ci" / "run").read_text(encoding="utf-8"), re.M)
    return sorted({*scripts, *(f"bash {s}" for s in ci)})


def test_readme_shows_the_two_setup_commands() -> None:
    commands = setup_commands()
    assert len(commands) == 2, commands
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    blocks = "\n".join(m.group(0) for m in FENCE.finditer(readme))
    for command in commands:
        assert re.search(rf"^{re.escape(command)}(\s|$)", blocks, re.M), f"README.md lacks `{command}`"
