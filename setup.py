"""The packages of the wheel. The arena definitions and the prompt templates are files people read and edit, so they
live at the top level (`arena/`, `prompts/`); a package-dir mapping (not a copy) puts them in the wheel as
agentqat/arena/definitions/ and agentqat/generators/llm/templates/, where `agentqat.edited_files` finds them after
an install. Everything else about the build is in pyproject.toml."""

from setuptools import find_namespace_packages, setup

MAPPED = {"agentqat.arena.definitions": "arena", "agentqat.generators.llm.templates": "prompts"}

setup(
    packages=find_namespace_packages(include=["agentqat", "agentqat.*"], exclude=["*.__pycache__"]) + list(MAPPED),
    package_dir=MAPPED,
)
