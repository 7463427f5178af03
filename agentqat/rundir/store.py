"""Run directories: a manifest plus append-only JSONL streams, written so that a kill loses at most a line.

runs/<name>/manifest.json    configuration, seeds, versions, schema version (written once, atomically)
runs/<name>/<stream>.jsonl   one JSON object per line, appended, flushed and fsynced
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from agentqat.errors import UserError
from agentqat.rundir.paths import MANIFEST_FILE

RUN_SCHEMA_VERSION = 1


def write_json_atomic(path: Path, data: object) -> None:
    """Writes `data` as JSON to `path` through a temporary file and rename, so readers never see half; the file
    is readable by all (0644; mkstemp's own 0600 would make strategy files and reports private)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.fchmod(handle, 0o644)
    with os.fdopen(handle, "w") as stream:
        json.dump(data, stream, indent=2, sort_keys=True)
        stream.flush()
        os.fsync(stream.fileno())
    os.replace(temporary, path)


class RunStore:
    """One run directory."""

    def __init__(self, directory: Path):
        self.directory = directory
        self._checked_streams: set[str] = set()

    @classmethod
    def create(cls, directory: Path, manifest: dict) -> RunStore:
        """Returns a new run directory holding `manifest`; refuses to overwrite an existing run."""
        if (directory / MANIFEST_FILE).exists():
            raise UserError(f"run {directory} already exists", "pick another run name, or resume it")
        directory.mkdir(parents=True, exist_ok=True)
        write_json_atomic(directory / MANIFEST_FILE, {"schema_version": RUN_SCHEMA_VERSION, **manifest})
        return cls(directory)

    @classmethod
    def open(cls, directory: Path) -> RunStore:
        """Returns the existing run in `directory`; UserError when its manifest is missing, damaged or of
        another schema version."""
        path = directory / MANIFEST_FILE
        if not path.is_file():
            raise UserError(f"{directory} is not a run directory (no {MANIFEST_FILE})", "pass runs/<name>")
        manifest = read_json_object(path)
        version = manifest.get("schema_version")
        if version != RUN_SCHEMA_VERSION:
            raise UserError(f"run {directory} has schema_version {version}", f"this agentqat reads {RUN_SCHEMA_VERSION}")
        return cls(directory)

    @property
    def manifest(self) -> dict:
        """Returns the manifest as written (agentqat.rundir.manifest.read_manifest validates it)."""
        return read_json_object(self.directory / MANIFEST_FILE)

    def append(self, stream: str, record: dict) -> None:
        """Appends one record to `<stream>.jsonl` and makes it durable before returning."""
        path = self.directory / f"{stream}.jsonl"
        if stream not in self._checked_streams:
            _drop_partial_last_line(path)
            self._checked_streams.add(stream)
        with open(path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record, sort_keys=True) + "\n")
            handle.flush()
            os.fsync(handle.fileno())

    def read(self, stream: str) -> list[dict]:
        """Returns the records (JSON objects) of `<stream>.jsonl`, ignoring a last line cut short by a kill;
        UserError naming the line when another line is not a JSON object."""
        path = self.directory / f"{stream}.jsonl"
        if not path.exists():
            return []
        records = []
        lines = path.read_text(encoding="utf-8").split("\n")
        for number, line in enumerate(lines):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except (json.JSONDecodeError, RecursionError):
                if number == len(lines) - 1:  # only the final, unterminated line may be partial
                    continue
                raise UserError(f"{path} line {number + 1} is not JSON", "the run directory is damaged") from None
            if not isinstance(record, dict):
                raise UserError(f"{path} line {number + 1} is not a JSON object", "the run directory is damaged or foreign")
            records.append(record)
        return records


def read_json_object(path: Path) -> dict:
    """Returns the JSON object in `path`; UserError when the file is not one."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
        raise UserError(f"{path} is not JSON", "the run directory is damaged") from None
    if not isinstance(data, dict):
        raise UserError(f"{path} is not a JSON object", "the run directory is damaged or foreign")
    return data


def _drop_partial_last_line(path: Path) -> None:
    """Cuts a final line that a kill left without its newline, so the next append starts clean."""
    if not path.exists():
        return
    with open(path, "rb+") as handle:
        content = handle.read()
        if content and not content.endswith(b"\n"):
            handle.truncate(content.rfind(b"\n") + 1)
