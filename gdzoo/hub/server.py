"""A minimal Hub-compatible HTTP endpoint serving Hub folders (``HF_ENDPOINT`` for air-gapped clusters).

It implements the ``/<repo_id>/resolve/<revision>/<file>`` route the way huggingface_hub expects:
``X-Repo-Commit``, ``ETag`` (sha256 of the file), ``Content-Length``, byte ranges, and 404s with
``X-Error-Code`` (``RepoNotFound``, ``RevisionNotFound``, ``EntryNotFound``).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse

from .layout import HubFolder

__all__ = ["HubRepoIndex", "serve_hub"]

_RESOLVE = re.compile(r"^/(?:models/)?(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<file>.+)$")
_RANGE = re.compile(r"^bytes=(\d+)-(\d*)$")


class HubRepoIndex:
    """Repo id → (folder, commit, file hashes), computed once at start-up."""

    def __init__(self, folders: Iterable[HubFolder], org: str | None = None) -> None:
        self.repos: dict[str, tuple[Path, str, dict[str, str]]] = {}
        for folder in folders:
            hashes = folder.file_hashes()
            self.repos[folder.repo_id(org)] = (folder.path, folder.commit_hash(hashes), hashes)


def _handler(index: HubRepoIndex) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:  # stdlib signature
            pass  # quiet: tests and users read huggingface_hub's messages instead

        def _error(self, code: str, message: str, commit: str | None = None) -> None:
            body = f'{{"error": "{message}"}}'.encode()
            self.send_response(404)
            self.send_header("X-Error-Code", code)
            self.send_header("X-Error-Message", message)
            if commit:
                self.send_header("X-Repo-Commit", commit)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command == "GET":
                self.wfile.write(body)

        def _resolve(self) -> None:
            match = _RESOLVE.match(unquote(urlparse(self.path).path))
            if not match:
                return self._error("RepoNotFound", f"no such route: {self.path}")
            repo, rev, name = match["repo"], match["rev"], match["file"]
            if repo not in index.repos:
                return self._error("RepoNotFound", f"Repository {repo} not found")
            folder, commit, hashes = index.repos[repo]
            if rev not in ("main", commit):
                return self._error("RevisionNotFound", f"Revision {rev} not found in {repo}")
            if name not in hashes:
                return self._error("EntryNotFound", f"{name} does not exist in {repo}", commit)
            data_path = folder / name
            size = data_path.stat().st_size
            start, end = 0, size - 1
            range_match = _RANGE.match(self.headers.get("Range", ""))
            if range_match:
                start = int(range_match[1])
                end = int(range_match[2]) if range_match[2] else size - 1
            self.send_response(206 if range_match else 200)
            self.send_header("X-Repo-Commit", commit)
            self.send_header("ETag", f'"{hashes[name]}"')
            self.send_header("Content-Length", str(end - start + 1))
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("Content-Type", "application/octet-stream")
            if range_match:
                self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
            self.end_headers()
            if self.command == "GET":
                with open(data_path, "rb") as f:
                    f.seek(start)
                    self.wfile.write(f.read(end - start + 1))

        do_HEAD = _resolve  # http.server naming
        do_GET = _resolve

    return Handler


@contextmanager
def serve_hub(folders: Iterable[HubFolder], host: str = "127.0.0.1", port: int = 0,
              org: str | None = None) -> Iterator[str]:
    """Serve ``folders`` on ``host:port`` (0 = any free port) in a thread; yields the endpoint URL."""
    server = ThreadingHTTPServer((host, port), _handler(HubRepoIndex(folders, org)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://{host}:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
