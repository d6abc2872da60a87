"""Uploaded training files (OpenAI's /v1/files), kept under TUNEYARD_HOME/files so the
trainer and its workers (a child process, or a Job mounting the same volume) read them.

Each file is `<id>/<filename>` plus `<id>/meta.json`, written to a staging folder and
renamed into place like adapter versions. A store given a `check` runs it on the staged
file first (the trainer's: trainer_service.dataset.check_file), and keeps nothing of a file
it refuses. Deleting renames the folder to a hidden trash name first, so a crash half way
leaves the file either whole or gone, never half there."""

import json
import re
import secrets
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from tuneyard.config import CommonSettings
from tuneyard.errors import InvalidArgument, NotFound
from tuneyard.projects import DEFAULT_PROJECT, visible

UPLOAD_PURPOSES = ("fine-tune",)  # what a client may upload
RESULTS_PURPOSE = "fine-tune-results"  # a job's results CSV, written by the trainer only
PURPOSES = (*UPLOAD_PURPOSES, RESULTS_PURPOSE)  # what a stored file may have
MAX_BYTES = 60 * 1024 * 1024  # under the 64 MiB gRPC message limit
CHUNK_BYTES = 1024 * 1024  # content is sent in pieces of this size, far under that limit
_ID = re.compile(r"^file-[0-9a-f]{24}$")
_META = "meta.json"


def files_dir(settings: CommonSettings) -> Path:
    return settings.home / "files"


@dataclass(frozen=True)
class FileInfo:
    id: str
    bytes: int
    created_at: float
    filename: str
    purpose: str
    project: str = DEFAULT_PROJECT  # files from before projects are the default project's


class FileStore:
    def __init__(self, root: Path, check: Callable[[Path], object] | None = None):
        self.root = Path(root)
        self.check = check  # raises InvalidArgument for content that must not be stored

    def put(
        self, filename: str, purpose: str, content: bytes, project: str = DEFAULT_PROJECT
    ) -> FileInfo:
        name = Path(filename or "").name
        if not name or name in (".", "..") or name == _META:
            raise InvalidArgument(f"invalid file name {filename!r}", param="filename")
        if purpose not in UPLOAD_PURPOSES:
            raise InvalidArgument(
                f"unsupported purpose {purpose!r}; supported: {', '.join(UPLOAD_PURPOSES)}",
                param="purpose",
            )
        if not content:
            raise InvalidArgument("the file is empty", param="file")
        if len(content) > MAX_BYTES:
            raise InvalidArgument(
                f"the file has {len(content)} bytes; the limit is {MAX_BYTES}", param="file"
            )
        return self._write(name, purpose, content, self.check, project)

    def put_results(self, filename: str, content: bytes, project: str) -> FileInfo:
        """A file the trainer made (a job's results CSV): no upload checks, its own purpose."""
        return self._write(filename, RESULTS_PURPOSE, content, None, project)

    def _write(self, name: str, purpose: str, content: bytes, check, project: str) -> FileInfo:
        info = FileInfo(
            "file-" + secrets.token_hex(12), len(content), time.time(), name, purpose, project
        )
        self.root.mkdir(parents=True, exist_ok=True)
        staging = self.root / f".staging-{info.id}"
        staging.mkdir()
        try:
            (staging / name).write_bytes(content)
            if check is not None:
                check(staging / name)
            (staging / _META).write_text(json.dumps(asdict(info)))
            staging.rename(self.root / info.id)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return info

    def get(self, file_id: str, project: str | None = None) -> FileInfo:
        """NOT_FOUND as well for another project's file than `project`'s (None: any)."""
        info = FileInfo(**json.loads((self._folder(file_id) / _META).read_text()))
        if not visible(project, info.project):
            raise NotFound(f"file {file_id!r} not found", param="file_id")
        return info

    def path(self, file_id: str) -> Path:
        """Where the file's content is, for reading it as training data."""
        return self._folder(file_id) / self.get(file_id).filename

    def read_chunks(self, file_id: str, size: int = CHUNK_BYTES) -> Iterator[bytes]:
        """The content in pieces of at most `size` bytes, never all of it in memory. Opened
        before the first piece is asked for, so an unknown id raises at once."""
        handle = self.path(file_id).open("rb")

        def chunks() -> Iterator[bytes]:
            with handle:
                while piece := handle.read(size):
                    yield piece

        return chunks()

    def delete(self, file_id: str) -> FileInfo:
        """Rename to a hidden trash folder (atomic: the file is then gone for every reader),
        then remove it; trash a crash left behind goes on the next delete."""
        info = self.get(file_id)
        trash = self.root / f".trash-{file_id}-{secrets.token_hex(4)}"
        try:
            self._folder(file_id).rename(trash)
        except FileNotFoundError:  # another delete won
            raise NotFound(f"file {file_id!r} not found", param="file_id") from None
        for stale in self.root.glob(".trash-*"):
            shutil.rmtree(stale, ignore_errors=True)
        return info

    def list(self, project: str | None = None) -> list[FileInfo]:
        """Newest first; with `project`, that project's only."""
        if not self.root.is_dir():
            return []
        found = []
        for folder in self.root.iterdir():
            if _ID.match(folder.name):
                try:
                    info = self.get(folder.name)
                except (NotFound, FileNotFoundError):  # deleted while listing
                    continue
                if visible(project, info.project):
                    found.append(info)
        return sorted(found, key=lambda f: f.created_at, reverse=True)

    def _folder(self, file_id: str) -> Path:
        folder = self.root / file_id
        if not _ID.match(file_id or "") or not (folder / _META).is_file():
            raise NotFound(f"file {file_id!r} not found", param="file_id")
        return folder
