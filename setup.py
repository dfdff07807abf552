"""Builds the wheel with the run-time trees (schemas, connectors, monitoring) as package data.

They stay at the repository's top level (the layout every tool and document names); the wheel
carries copies under ``streams/_resources/`` so an installed worker finds them from any directory
(``streams.resources``). Everything else is in ``pyproject.toml``.
"""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

TREES = ("schemas", "connectors", "monitoring")


class BuildWithResources(build_py):
    """``build_py`` that also copies the run-time trees into the built package."""

    def run(self) -> None:
        super().run()
        if self.editable_mode:  # a source checkout reads them in place
            return
        here = Path(__file__).resolve().parent
        for tree in TREES:
            target = Path(self.build_lib) / "streams" / "_resources" / tree
            shutil.rmtree(target, ignore_errors=True)
            shutil.copytree(here / tree, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))


setup(cmdclass={"build_py": BuildWithResources})
