"""requirements.lock pins every package with hashes and agrees with pyproject.toml's pins;
environment.yml is generated from the same lock; the installed environment is the lock.
Offline: reads the committed files and the installed packages' metadata."""

import importlib.metadata as md
import importlib.util
import re

import pytest
import yaml
from packaging.requirements import Requirement

from helpers.config import REPO_ROOT

_spec = importlib.util.spec_from_file_location("lock_tool", REPO_ROOT / "tools" / "lock.py")
lock_tool = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(lock_tool)

LOCK_TEXT = (REPO_ROOT / "requirements.lock").read_text()
ENTRIES = lock_tool.parse_lock(LOCK_TEXT)
LOCKED = {e["name"]: e for e in ENTRIES}


def test_every_direct_pin_of_pyproject_is_locked_at_its_version():
    pins = lock_tool.pyproject_pins(REPO_ROOT / "pyproject.toml")
    assert {"torch", "torchvision", "open-clip-torch", "pytest"} <= set(pins)
    wrong = {n: (v, LOCKED[n]["version"] if n in LOCKED else None)
             for n, v in pins.items() if n not in LOCKED or LOCKED[n]["version"] != v}
    assert not wrong, f"pyproject pin vs requirements.lock (run `make lock`): {wrong}"


def test_every_lock_entry_carries_sha256_hashes():
    assert len(ENTRIES) > 100, "the lock should hold the transitive packages too"
    def valid(h):
        return re.fullmatch(r"sha256:[0-9a-f]{64}", h)

    bad = [f"{e['name']}=={e['version']}" for e in ENTRIES
           if not e["hashes"] or not all(valid(h) for h in e["hashes"])]
    assert not bad, f"entries without valid --hash=sha256:... lines: {bad}"
    unconditional = [e["name"] for e in ENTRIES if not e["marker"]]
    assert len(unconditional) == len(set(unconditional)), "a package is pinned twice"


def test_lock_pins_the_set_up_tools_and_torchs_cuda_wheels_for_linux():
    for tool in ("uv", "pip", "setuptools"):
        assert tool in LOCKED, f"the Makefile installs {tool} from requirements.lock"
    nvidia = [e for e in ENTRIES if e["name"].startswith("nvidia-")]
    assert nvidia and all("sys_platform == 'linux'" in e["marker"] for e in nvidia)


def test_check_reports_a_missing_hash_and_a_drifted_pin():
    entries = lock_tool.parse_lock("torch==2.14.1 \\\n    --hash=sha256:" + "a" * 64
                                   + "\nnumpy==2.4.6\n")
    problems = lock_tool.check(entries, {"torch": "2.14.0", "numpy": "2.4.6"})
    assert any("torch==2.14.0" in p and "2.14.1" in p for p in problems)
    assert any(p.startswith("numpy==2.4.6 has no --hash") for p in problems)
    with pytest.raises(ValueError, match="line 1"):
        lock_tool.parse_lock("torch>=2\n")


def test_environment_yml_is_generated_from_the_lock():
    text = (REPO_ROOT / "environment.yml").read_text()
    python = lock_tool.python_minor(REPO_ROOT / "pyproject.toml")
    expected = lock_tool.render_environment(ENTRIES, python)
    assert text == expected, "environment.yml is stale: run `python3 tools/lock.py --env-only`"
    env = yaml.safe_load(text)
    assert "python=3.11" in env["dependencies"]
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert pip_section[-1] == "-e .[dev]"
    pinned = {}
    for line in pip_section[:-1]:
        req = Requirement(line)
        pinned[(lock_tool.normalize(req.name), str(req.marker or ""))] = str(req.specifier)
    assert pinned == {(e["name"], str(Requirement(lock_tool.requirement(e)).marker or "")):
                      f"=={e['version']}" for e in ENTRIES}


def _closure(root: str, extras: set[str]) -> dict[str, set[str]]:
    """Installed distributions `root[extras]` needs on this platform: {name: extras asked}."""
    todo, seen = [(root, extras)], {}
    while todo:
        name, want = todo.pop()
        name = lock_tool.normalize(name)
        if name in seen and want <= seen[name]:
            continue
        seen[name] = seen.get(name, set()) | want
        for spec in md.requires(name) or []:
            req = Requirement(spec)
            asked = seen[name] | {""}
            if req.marker is None or any(req.marker.evaluate({"extra": x}) for x in asked):
                todo.append((req.name, set(req.extras)))
    return seen


def test_installed_environment_is_the_lock():
    try:
        md.version("iuxray-book")
    except md.PackageNotFoundError:
        pytest.skip("the project is not installed (run `make setup`)")
    need = set(_closure("iuxray-book", {"dev"})) - {"iuxray-book"}
    missing = sorted(need - set(LOCKED))
    assert not missing, f"installed dependencies missing from requirements.lock: {missing}"
    drift = {n: (md.version(n), LOCKED[n]["version"]) for n in need
             if md.version(n) != LOCKED[n]["version"]}
    assert not drift, f"installed vs locked versions (run `make setup`): {drift}"
