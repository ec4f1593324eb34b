"""The remote as a content-addressed store, with an index by request key (docs/remote.md):

    <root>/objects/<aa>/<sha256>.mp4   the videos, the same objects as the local store
    <root>/index/<request key>.json    {"sha256", "size", "duration", "task_id", "endpoint"}

Every call goes through fsspec. What is there is learned by one recursive listing of a
folder (paginated by the backend: one request per 1,000 names on S3), never by a request per
object. A folder remote gets whole files only (written beside, then renamed); an object
store's upload is whole by itself.
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kling_pipeline.remote.url import RemoteSpec, open_filesystem, remote_failure

if TYPE_CHECKING:
    from fsspec import AbstractFileSystem

    from kling_pipeline.state.lockfile import Output

INDEX_FORMAT = 1
_OBJECT = re.compile(r"(?:^|/)objects/([0-9a-f]{2})/([0-9a-f]{64})\.mp4$")
_INDEX = re.compile(r"(?:^|/)index/([0-9a-f]{64})\.json$")
_SHA = re.compile(r"[0-9a-f]{64}")
_CHUNK = 1 << 20  # bytes read at a time from a remote object
_RANGE = 16 << 20  # bytes asked for at a time from an object store
# Protocols whose uploads are atomic and which have no folders to make.
_OBJECT_STORES = frozenset({"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "memory"})


@dataclass(frozen=True)
class IndexEntry:
    """What a request key produced, as the remote's index holds it."""

    sha256: str
    size: int
    duration: float
    task_id: str | None
    endpoint: str

    @classmethod
    def parse(cls, raw: bytes) -> IndexEntry | None:
        """The entry `raw` holds, or None when it is not one (every field of its type)."""
        data = json_object(raw)
        if data is None:
            return None
        sha, size, duration = data.get("sha256"), data.get("size"), data.get("duration")
        task_id, endpoint = data.get("task_id"), data.get("endpoint")
        if not (isinstance(sha, str) and _SHA.fullmatch(sha) and type(size) is int and size > 0
                and isinstance(duration, int | float) and not isinstance(duration, bool)
                and duration > 0 and isinstance(endpoint, str)
                and (task_id is None or isinstance(task_id, str))):
            return None
        return cls(sha, size, float(duration), task_id or None, endpoint)

    def to_bytes(self) -> bytes:
        return json.dumps({"format": INDEX_FORMAT, "sha256": self.sha256, "size": self.size,
                           "duration": self.duration, "task_id": self.task_id,
                           "endpoint": self.endpoint}, sort_keys=True, indent=1).encode() + b"\n"


class RemoteStore:
    """One remote, opened for one command."""

    def __init__(self, spec: RemoteSpec) -> None:
        self.spec = spec
        self.fs: AbstractFileSystem
        self.fs, self.root = open_filesystem(spec)
        self._atomic = spec.protocol in _OBJECT_STORES

    def object_path(self, sha256: str) -> str:
        return f"{self.root}/objects/{sha256[:2]}/{sha256}.mp4"

    def index_path(self, key: str) -> str:
        return f"{self.root}/index/{key}.json"

    def _find(self, folder: str) -> dict[str, Any]:
        try:
            found: dict[str, Any] = self.fs.find(f"{self.root}/{folder}", detail=True)
        except FileNotFoundError:
            return {}
        except Exception as exc:
            raise remote_failure(self.spec, f"listing {folder}/", exc) from None
        return found

    def list_objects(self) -> dict[str, int]:
        """The objects there, sha256 -> size, from one recursive listing."""
        objects: dict[str, int] = {}
        for path, info in self._find("objects").items():
            found = _OBJECT.search(path)
            if found and found.group(2).startswith(found.group(1)):
                objects[found.group(2)] = int(info.get("size") or 0)
        return objects

    def list_index(self) -> set[str]:
        """The request keys in the index, from one recursive listing."""
        return {found.group(1) for path in self._find("index")
                if (found := _INDEX.search(path))}

    def _mkdirs(self, path: str) -> None:
        if not self._atomic:
            self.fs.makedirs(path.rpartition("/")[0], exist_ok=True)

    def put_object(self, local: Path, sha256: str) -> None:
        """Upload a local object under its name (whole: a reader never sees a part)."""
        final = self.object_path(sha256)
        try:
            self._mkdirs(final)
            if self._atomic:
                self.fs.put_file(str(local), final)
            else:
                part = f"{final}.{uuid.uuid4().hex}.part"
                self.fs.put_file(str(local), part)
                self.fs.mv(part, final)
        except Exception as exc:
            raise remote_failure(self.spec, f"uploading {sha256[:12]}", exc) from None

    def put_index(self, key: str, entry: IndexEntry) -> None:
        final = self.index_path(key)
        try:
            self._mkdirs(final)
            if self._atomic:
                self.fs.pipe_file(final, entry.to_bytes())
            else:
                part = f"{final}.{uuid.uuid4().hex}.part"
                self.fs.pipe_file(part, entry.to_bytes())
                self.fs.mv(part, final)
        except Exception as exc:
            raise remote_failure(self.spec, f"writing the index entry {key[:12]}", exc) \
                from None

    def read_index(self, keys: Iterable[str]) -> dict[str, bytes]:
        """The bodies of the index entries of `keys` that are there, read in one batch
        (`fs.cat` of the list: concurrent requests on S3); an entry absent is left out."""
        paths = {self.index_path(key): key for key in sorted(set(keys))}
        if not paths:
            return {}
        try:
            bodies = self.fs.cat(list(paths), on_error="return")
        except Exception as exc:
            raise remote_failure(self.spec, "reading index/", exc) from None
        by_name = {path.rsplit("/", 1)[-1]: body for path, body in bodies.items()}
        found: dict[str, bytes] = {}
        for key in paths.values():
            body = by_name.get(f"{key}.json")
            if body is None or isinstance(body, FileNotFoundError):
                continue  # deleted since it was listed
            if isinstance(body, BaseException):
                raise remote_failure(self.spec, f"reading the index entry {key[:12]}", body)
            found[key] = bytes(body)
        return found

    def _chunks(self, path: str, size: int | None) -> Iterator[bytes]:
        """The bytes of `path`, a part at a time: on an object store with the size known,
        one ranged GET per _RANGE bytes (a file object would first ask for the object's
        details: a request more per video); else a streamed read."""
        if self._atomic and size is not None:
            for start in range(0, size, _RANGE):
                yield self.fs.cat_file(path, start=start, end=min(start + _RANGE, size))
            return
        with self.fs.open(path, "rb") as source:
            while chunk := source.read(_CHUNK):
                yield chunk

    def object_size(self, sha256: str) -> int | None:
        """The size of the object in the remote, None when it is not there."""
        try:
            return int(self.fs.size(self.object_path(sha256)))
        except FileNotFoundError:
            return None
        except Exception as exc:
            raise remote_failure(self.spec, f"looking for {sha256[:12]}", exc) from None

    def get_object(self, sha256: str, dest: Path, size: int | None = None) -> str:
        """Download an object to `dest`, hashing its bytes on the way (read once, not read
        back): the sha256 of what arrived, for the caller to hold against the name. `size`
        (known from a listing) spares an object store the request that would look it up."""
        digest = hashlib.sha256()
        path = self.object_path(sha256)
        try:
            with open(dest, "wb") as sink:
                for chunk in self._chunks(path, size):
                    digest.update(chunk)
                    sink.write(chunk)
        except Exception as exc:
            raise remote_failure(self.spec, f"downloading {sha256[:12]}", exc) from None
        return digest.hexdigest()


def json_object(raw: bytes) -> dict[str, Any] | None:
    """The JSON object `raw` holds; None for anything else (a remote's bytes are anyone's)."""
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):  # RecursionError: nested deeper than Python recurses
        return None
    return data if isinstance(data, dict) else None


def index_entry(output: Output, task_id: str | None, endpoint: str) -> IndexEntry:
    return IndexEntry(output.sha256, output.size, output.duration, task_id, endpoint)
