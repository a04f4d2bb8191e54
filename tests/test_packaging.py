"""Installable into a user's environment: ranges in pyproject, exact pins in constraints.txt, extras per part,
and a clear error naming the extra when a part is used without it."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
HEAVY = {"torch", "grpcio", "grpcio-tools", "protobuf", "matplotlib", "faiss-cpu", "networkx", "igraph", "ray"}


def _name(req: str) -> str:
    return re.split(r"[<>=!~\[; ]", req, maxsplit=1)[0].lower()


def _project() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def test_pyproject_declares_ranges_and_keeps_heavy_parts_in_extras() -> None:
    project = _project()
    reqs = list(project["dependencies"]) + [r for rs in project["optional-dependencies"].values() for r in rs]
    pinned = [r for r in reqs if "==" in r]
    assert not pinned, f"exact pins belong in constraints.txt, not pyproject: {pinned}"
    core = {_name(r) for r in project["dependencies"]}
    assert not core & HEAVY, f"core dependencies pull optional parts: {core & HEAVY}"
    extras = project["optional-dependencies"]
    assert {"ekko", "service", "report", "bench", "dist", "all", "dev"} <= set(extras)
    assert "torch" in {_name(r) for r in extras["ekko"]}
    assert "torch" not in {_name(r) for r in extras["service"]}


def test_constraints_pin_every_declared_package_exactly() -> None:
    pins = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"constraints.txt line {line!r} is not an exact pin"
            pins[name.lower().replace("_", "-")] = version
    project = _project()
    declared = {_name(r) for r in project["dependencies"]}
    declared |= {_name(r) for rs in project["optional-dependencies"].values() for r in rs if not r.startswith("recmine")}
    missing = sorted(d for d in declared if d not in pins)
    assert not missing, f"constraints.txt does not pin {missing}"
    assert pins["torch"].startswith("2.13.0"), "torch stays at the 2.13.0 CPU build"
    assert "-c constraints.txt" in (REPO / "Makefile").read_text()


# A child interpreter in which the optional packages cannot be imported (as if never installed).
BLOCKER = r'''
import importlib.abc, sys
BLOCKED = {"torch", "grpc", "grpc_tools", "google.protobuf", "matplotlib", "faiss", "ray", "networkx", "igraph"}
class Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name in BLOCKED or any(name.startswith(b + ".") for b in BLOCKED):
            raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)", name=name)
        return None
sys.meta_path.insert(0, Blocker())
'''


def _run(code: str, tmp_path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", BLOCKER + code], capture_output=True, text=True, cwd=tmp_path,
                          timeout=300)


def test_mining_and_retrieval_work_without_optional_parts(tmp_path: Path) -> None:
    (tmp_path / "g.txt").write_text("0 1\n1 2\n2 0\n2 3\n")
    code = r'''
import json, sys, numpy as np
from recmine.cli import main
def cli(*args):
    sys.argv = ["recmine", *args]
    try:
        main()
    except SystemExit as e:
        assert not e.code, (args, e.code)
cli("mine", "count", "--graph", "g.txt", "--pattern", "triangle", "--json")
np.save("x.npy", np.random.default_rng(0).standard_normal((500, 16)).astype(np.float32))
cli("retrieve", "build", "--vectors", "x.npy", "--out", "idx", "--json")
from recmine.faery import Index
assert len(Index.load("idx")) == 500
assert not any(m in sys.modules for m in ("torch", "grpc", "matplotlib")), "an optional part was imported"
'''
    out = _run(code, tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads(out.stdout.splitlines()[0])["count"] == 1


@pytest.mark.parametrize(("code", "extra"), [
    ("import recmine.ekko.rec.model", "ekko"),
    ("import recmine.ekko.ps.store", "ekko"),
    ("from recmine.faery import connect", "service"),
    ("import recmine.report", "report"),
])
def test_api_without_its_extra_names_the_extra(tmp_path: Path, code: str, extra: str) -> None:
    out = _run(code, tmp_path)
    assert out.returncode != 0
    assert "MissingExtraError" in out.stderr and f"recmine[{extra}]" in out.stderr, out.stderr[-2000:]


@pytest.mark.parametrize(("args", "extra"), [
    (["ekko", "bench", "--dcs", "2"], "ekko"),
    (["retrieve", "serve", "--index", "nowhere", "--for-seconds", "1"], "service"),
])
def test_cli_without_its_extra_says_what_to_install(tmp_path: Path, args: list[str], extra: str) -> None:
    code = f"import sys\nfrom recmine.cli import main\nsys.argv = ['recmine', *{args!r}]\nmain()\n"
    out = _run(code, tmp_path)
    assert out.returncode == 1, (out.returncode, out.stderr[-2000:])
    assert f"recmine[{extra}]" in out.stderr and "Traceback" not in out.stderr, out.stderr[-2000:]
