"""The GPU box's conda environment must install what pyproject.toml declares, at compatible versions."""

import re
import tomllib
from pathlib import Path

import yaml
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
NOT_PYTHON_PACKAGES = {"python", "pip", "mpich"}  # the interpreter, the installer, the MPI library


def declared() -> dict[str, Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = [*project["dependencies"], *project["optional-dependencies"]["dev"]]
    return {Requirement(r).name.lower(): Requirement(r) for r in reqs}


def environment() -> dict[str, Requirement]:
    deps = yaml.safe_load((ROOT / "environment.yml").read_text())["dependencies"]
    entries = [d for d in deps if isinstance(d, str)]
    entries += next(d["pip"] for d in deps if isinstance(d, dict))
    found = {}
    for entry in entries:
        entry = entry.split("#")[0].strip()
        if entry == "-e ." or re.split(r"[=<>]", entry)[0] in NOT_PYTHON_PACKAGES:
            continue
        if re.fullmatch(r"[\w.-]+=[\w.]+", entry):  # conda's single '=' pin
            entry = entry.replace("=", "==")
        req = Requirement(entry)
        found[req.name.lower()] = req
    return found


def test_environment_and_pyproject_list_the_same_packages():
    # mpich is a dev extra in pyproject (PyPI's build) and a conda package in the env: the same MPI.
    assert set(environment()) == set(declared()) - {"mpich"}


def test_versions_agree():
    env, decl = environment(), declared()
    for name, req in env.items():
        spec = str(req.specifier)
        pinned = [s for s in req.specifier if s.operator == "=="]
        if pinned:  # an exact pin must satisfy pyproject's range
            assert decl[name].specifier.contains(Version(pinned[0].version)), name
        else:
            assert spec == str(decl[name].specifier), f"{name}: {spec} vs {decl[name].specifier}"


def test_the_makefile_pins_the_same_torch_as_the_environment():
    pin = str(environment()["torch"].specifier)
    assert f"TORCH_VERSION ?= {pin.lstrip('=')}" in (ROOT / "Makefile").read_text()
    assert (ROOT / "constraints.txt").read_text().strip() == f"torch{pin}"
