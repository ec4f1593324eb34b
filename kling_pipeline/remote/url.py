"""Which remote a command uses, and its fsspec file system.

The remote is `--remote URL`, else the environment variable KLING_PIPELINE_REMOTE, else the
storyboard's `remote:`. A URL without a scheme is a folder (relative to the storyboard's
folder when the storyboard names it, to the working folder otherwise). Credentials come only
from the backend's usual places (for s3fs: the AWS environment variables and profiles): a URL
holding some is refused, and no text this module makes quotes a secret of the environment.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kling_pipeline.errors import RemoteError, UsageError
from kling_pipeline.textsafe import clip

if TYPE_CHECKING:
    from fsspec import AbstractFileSystem

    from kling_pipeline.storyboard.settings import RemoteSettings

ENV_URL = "KLING_PIPELINE_REMOTE"
ENV_ENDPOINT = "KLING_PIPELINE_REMOTE_ENDPOINT_URL"
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
# Environment variables whose values must never appear in a message.
_SECRET_NAMES = re.compile(r"(SECRET|TOKEN|PASSWORD|CREDENTIAL|_KEY$|ACCOUNT_KEY|SAS)", re.I)
# Seconds to wait for an S3 server's connection, and attempts, so an unreachable endpoint is
# an error in seconds rather than minutes of botocore's retries.
_S3_CONFIG = {"connect_timeout": 5, "read_timeout": 60, "retries": {"max_attempts": 3}}


@dataclass(frozen=True)
class RemoteSpec:
    """A remote as named: its URL (a folder made absolute) and an S3 endpoint, if any."""

    url: str
    endpoint_url: str | None = None

    def simulated(self) -> RemoteSpec:
        """The part of this remote for simulated renders: animatics have the same request
        keys as the renders they preview, so they must never share an index with them."""
        return RemoteSpec(f"{self.url.rstrip('/')}/simulated", self.endpoint_url)

    @property
    def protocol(self) -> str:
        found = _SCHEME.match(self.url)
        return found.group(1).lower() if found else "file"


def choose_remote(given: str | None, given_endpoint: str | None,
                  board: RemoteSettings | None, board_dir: Path) -> RemoteSpec | None:
    """The remote a command uses (see the module's text); None when none is named."""
    env_url = os.environ.get(ENV_URL, "").strip() or None
    env_endpoint = os.environ.get(ENV_ENDPOINT, "").strip() or None
    if given:
        url, endpoint, base = given, given_endpoint or env_endpoint, Path.cwd()
    elif env_url:
        url, endpoint, base = env_url, given_endpoint or env_endpoint, Path.cwd()
    elif board is not None:
        url = board.url
        endpoint = given_endpoint or env_endpoint or board.endpoint_url
        base = board_dir
    else:
        return None
    _refuse_credentials(url)
    if endpoint is not None and not endpoint.startswith(("http://", "https://")):
        raise UsageError("must start with http:// or https://", option="--remote-endpoint-url")
    if not _SCHEME.match(url):
        url = str((base / Path(url).expanduser()).resolve())
    spec = RemoteSpec(url, endpoint)
    if endpoint is not None and spec.protocol not in ("s3", "s3a"):
        raise UsageError(f"an endpoint URL is for an s3:// remote, not {spec.protocol}://",
                         option="--remote-endpoint-url")
    return spec


def _refuse_credentials(url: str) -> None:
    found = _SCHEME.match(url)
    if found and "@" in url[found.end():].split("/", 1)[0]:
        raise UsageError("the remote URL holds credentials (user@ or user:secret@): give them "
                         "through the backend's environment or profile instead", option="--remote")


def open_filesystem(spec: RemoteSpec) -> tuple[AbstractFileSystem, str]:
    """The fsspec file system of the remote and the root path in it (made fresh: listings are
    never cached between commands, nor between two opens)."""
    try:
        from fsspec.core import url_to_fs
    except ImportError as exc:  # pragma: no cover - fsspec is a dependency
        raise RemoteError("the remote needs the package fsspec (pip install fsspec)") from exc
    options: dict[str, Any] = {"skip_instance_cache": True}
    if spec.protocol in ("s3", "s3a"):
        options["use_listings_cache"] = False
        options["config_kwargs"] = dict(_S3_CONFIG)
        if spec.endpoint_url:
            options["endpoint_url"] = spec.endpoint_url
    try:
        fs, root = url_to_fs(spec.url, **options)
    except ImportError as exc:
        raise RemoteError(f"the remote {shown(spec)} needs a package that is not installed: "
                          f"{scrub(str(exc))}") from None
    except ValueError as exc:
        raise RemoteError(f"the remote {shown(spec)} cannot be used: {scrub(str(exc))}") \
            from None
    except Exception as exc:  # a backend that connects when made (ftp, sftp) fails here
        raise remote_failure(spec, "connecting", exc) from None
    return fs, str(root).rstrip("/")


def shown(spec: RemoteSpec) -> str:
    """The remote as a message names it."""
    text = spec.url if spec.endpoint_url is None else f"{spec.url} (at {spec.endpoint_url})"
    return clip(scrub(text))


def scrub(text: str) -> str:
    """`text` without the value of any secret-looking environment variable."""
    for name, value in os.environ.items():
        if len(value) >= 8 and _SECRET_NAMES.search(name) and value in text:
            text = text.replace(value, "***")
    return text


def remote_failure(spec: RemoteSpec, doing: str, exc: BaseException) -> RemoteError:
    """A located, plain error for a backend's exception (no traceback, no secret)."""
    detail = scrub(str(exc)) or type(exc).__name__
    what = f"{doing} failed: {type(exc).__name__}: {clip(detail, 300)}"
    return RemoteError(f"the remote {shown(spec)}: {what}", detail=what)
