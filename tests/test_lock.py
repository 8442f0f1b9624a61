"""ops/requirements.lock still satisfies pyproject.toml, and this environment is the locked one.

The lock pins the whole dependency set (runtime plus the `test` extra) with exact versions and
hashes; `bash ops/lock.sh` regenerates it. These tests fail when someone edits pyproject.toml
without regenerating the lock, when the lock loses its regeneration command, and when the
environment running the suite has drifted from the lock (a package upgraded by hand, an install
that did not come from the lock).
"""

from __future__ import annotations

import importlib.metadata
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import NormalizedName, canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = ROOT / "pyproject.toml"
LOCK = ROOT / "ops" / "requirements.lock"
LOCK_SCRIPT = ROOT / "ops" / "lock.sh"
REGENERATE = "bash ops/lock.sh"
EXTRA = "test"


@dataclass(frozen=True)
class Pin:
    name: NormalizedName
    version: Version
    marker: Marker | None

    def applies_here(self) -> bool:
        return self.marker is None or self.marker.evaluate()


def _lock_lines() -> list[str]:
    """The lock's logical lines: continuations joined, comments and hash options dropped."""
    logical: list[str] = []
    current = ""
    for raw in LOCK.read_text(encoding="utf-8").splitlines():
        line = raw.split(" #", 1)[0].rstrip() if not raw.lstrip().startswith("#") else ""
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        current += line
        if current.strip():
            logical.append(current.strip())
        current = ""
    if current.strip():
        logical.append(current.strip())
    return logical


def _parse_lock() -> dict[NormalizedName, list[Pin]]:
    pins: dict[NormalizedName, list[Pin]] = {}
    for line in _lock_lines():
        if line.startswith("-"):  # an option line (--index-url and the like)
            continue
        spec = " ".join(part for part in line.split() if not part.startswith("--hash="))
        req = Requirement(spec)
        (only,) = req.specifier  # exactly one `==` per line, or the file is no lock
        assert only.operator == "==", f"lock line is not an exact pin: {line!r}"
        assert not req.extras, f"lock line carries extras (they belong in pyproject.toml): {line!r}"
        name = canonicalize_name(req.name)
        pins.setdefault(name, []).append(Pin(name, Version(only.version), req.marker))
    return pins


def _project_requirements() -> list[tuple[str, Requirement]]:
    project = tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))["project"]
    reqs = [("dependencies", Requirement(r)) for r in project["dependencies"]]
    reqs += [(f"optional-dependencies.{EXTRA}", Requirement(r)) for r in project["optional-dependencies"][EXTRA]]
    return reqs


LOCKED = _parse_lock()
REQUIREMENTS = _project_requirements()


def _applicable(req: Requirement, extra: str = "") -> bool:
    return req.marker is None or req.marker.evaluate({"extra": extra})


def _locked_here(name: str) -> Pin | None:
    """The pin of `name` that applies to this interpreter and platform (None when none does)."""
    here = [p for p in LOCKED.get(canonicalize_name(name), []) if p.applies_here()]
    assert len(here) <= 1, f"{name} is pinned more than once for this environment: {here}"
    return here[0] if here else None


def test_lock_header_names_the_command_that_regenerates_it():
    header = []
    for line in LOCK.read_text(encoding="utf-8").splitlines():
        if not line.startswith("#"):
            break
        header.append(line)
    assert any(REGENERATE in line for line in header), (
        f"the lock's header must name `{REGENERATE}`; regenerate it with that command"
    )
    script = LOCK_SCRIPT.read_text(encoding="utf-8")
    for needed in ("pip compile pyproject.toml", f"--extra {EXTRA}", "--generate-hashes", "ops/requirements.lock"):
        assert needed in script, f"ops/lock.sh no longer runs the documented command ({needed!r} missing)"


def test_every_lock_line_is_pinned_with_hashes():
    text = LOCK.read_text(encoding="utf-8")
    for line in _lock_lines():
        if line.startswith("-"):
            continue
        assert "--hash=sha256:" in line, f"lock line has no hash: {line.split()[0]}"
    assert LOCKED, f"{LOCK} pins nothing"
    assert text.endswith("\n")


@pytest.mark.parametrize(("where", "req"), REQUIREMENTS, ids=[str(r) for _, r in REQUIREMENTS])
def test_lock_satisfies_pyproject(where, req):
    pins = LOCKED.get(canonicalize_name(req.name), [])
    if not pins:
        # A dependency whose marker excludes every supported interpreter may be absent.
        assert not _applicable(req), f"{req} ({where}) is not in ops/requirements.lock: run `{REGENERATE}`"
        return
    # Every fork of a universal lock is a version some environment installs: all must fit.
    for pin in pins:
        assert req.specifier.contains(pin.version, prereleases=True), (
            f"{req} ({where}) but the lock pins {pin.name}=={pin.version}"
            f"{' ; ' + str(pin.marker) if pin.marker else ''}: run `{REGENERATE}`"
        )
    if _applicable(req):
        assert _locked_here(req.name) is not None, (
            f"{req} ({where}) has no pin for this interpreter/platform in the lock: run `{REGENERATE}`"
        )


WITH_EXTRAS = [(w, r) for w, r in REQUIREMENTS if r.extras]


@pytest.mark.parametrize(("where", "req"), WITH_EXTRAS, ids=[str(r) for _, r in WITH_EXTRAS])
def test_lock_holds_what_the_requested_extras_bring(where, req):
    """`psycopg[binary]`, `uvicorn[standard]`...: the extra's own requirements are locked too.

    What an extra brings is read from the locked release's metadata, so this needs that release
    installed; when it is not, the drift tests below fail and say so.
    """
    pin = _locked_here(req.name)
    assert pin is not None
    try:
        installed = importlib.metadata.distribution(req.name)
    except importlib.metadata.PackageNotFoundError:
        pytest.skip(f"{req.name} is not installed (see test_installed_direct_dependencies_match_the_lock)")
    if Version(installed.version) != pin.version:
        pytest.skip(f"{req.name} {installed.version} installed, lock has {pin.version} (see the drift tests)")
    brought = []
    for raw in installed.requires or []:
        sub = Requirement(raw)
        if sub.marker is None or sub.marker.evaluate({"extra": ""}):
            continue  # a plain dependency of the package, not one of the extra
        if any(sub.marker.evaluate({"extra": extra}) for extra in req.extras):
            brought.append(sub)
    for extra in req.extras:
        known = {canonicalize_name(e) for e in installed.metadata.get_all("Provides-Extra") or []}
        assert canonicalize_name(extra) in known, f"{req.name} {pin.version} has no extra {extra!r}"
    for sub in brought:
        sub_pin = _locked_here(sub.name)
        assert sub_pin is not None, f"{req} brings {sub} but the lock does not pin it: run `{REGENERATE}`"
        assert sub.specifier.contains(sub_pin.version, prereleases=True), (
            f"{req} brings {sub} but the lock pins {sub_pin.version}: run `{REGENERATE}`"
        )


def _installed_version(name: str) -> Version | None:
    try:
        return Version(importlib.metadata.version(name))
    except importlib.metadata.PackageNotFoundError:
        return None


DIRECT = [r for _, r in REQUIREMENTS if _applicable(r)]


@pytest.mark.parametrize("req", DIRECT, ids=[r.name for r in DIRECT])
def test_installed_direct_dependencies_match_the_lock(req):
    pin = _locked_here(req.name)
    assert pin is not None, f"{req.name} has no pin for this environment: run `{REGENERATE}`"
    installed = _installed_version(req.name)
    assert installed == pin.version, (
        f"{req.name} {installed or 'is not installed'} here, the lock pins {pin.version}: this "
        f"environment drifted; reinstall with `python3 -m pip install -r ops/requirements.lock`"
    )


def test_installed_environment_matches_the_whole_lock():
    drifted = []
    for pins in LOCKED.values():
        for pin in pins:
            if not pin.applies_here():
                continue
            installed = _installed_version(pin.name)
            if installed != pin.version:
                drifted.append(f"{pin.name}: lock {pin.version}, installed {installed or 'nothing'}")
    assert not drifted, (
        "this environment drifted from ops/requirements.lock (reinstall with "
        "`python3 -m pip install -r ops/requirements.lock`):\n  " + "\n  ".join(drifted)
    )
