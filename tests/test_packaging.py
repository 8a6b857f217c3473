"""Every Python package folder of the project is listed in pyproject.toml, so wheels hold it."""

from __future__ import annotations

import tomllib

from conftest import REPO_ROOT

AREAS = ("codec", "traces", "sim", "controllers", "reports", "scenarios", "profiles")


def test_every_package_folder_is_packaged() -> None:
    config = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    found = set()
    for area in AREAS:
        for init in (REPO_ROOT / area).rglob("__init__.py"):
            rel = init.parent.relative_to(REPO_ROOT).parts
            found.add(".".join(("kvcast", *rel)))
    missing = sorted(found - listed)
    assert not missing, f"add to [tool.setuptools] packages in pyproject.toml: {missing}"
