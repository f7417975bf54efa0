"""A local stand-in for the Hugging Face Hub: serves model repos over HTTP the way the Hub API
answers `huggingface_hub.snapshot_download` and `hf_hub_download`, so the hub path of
`parcae.model.hub` runs for real in the tests.

Endpoints (what huggingface_hub calls):
- `GET /api/models/{repo}/revision/{rev}`: repo info, `{"id", "sha", "siblings"}`;
- `GET /api/models/{repo}/tree/{sha}`: the file listing (size, git oid, LFS sha256 for weights);
- `HEAD|GET /{repo}/resolve/{rev}/{file}`: the file, with `X-Repo-Commit`, `ETag` (and for LFS
  files `X-Linked-Etag` = sha256, `X-Linked-Size`).
An unknown repo, revision or file answers 404 with the Hub's `X-Error-Code`. `faults` injects a
broken download of one file: "truncate" (the connection closes halfway) or "corrupt" (the right
size, wrong bytes).
"""

from __future__ import annotations

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse

LFS_SUFFIXES = (".bin", ".pt", ".safetensors")


class Repo:
    """One repo: revision name -> {file name: bytes}; every revision also answers by its sha."""

    def __init__(self, revisions: dict[str, dict[str, bytes]]):
        self.revisions = revisions
        self.shas = {
            name: hashlib.sha1(f"{name}:{sorted(files)}".encode()).hexdigest()
            for name, files in revisions.items()
        }

    def files(self, revision: str) -> tuple[str, dict[str, bytes]] | None:
        for name, sha in self.shas.items():
            if revision in (name, sha):
                return sha, self.revisions[name]
        return None


def use_local_hub(endpoint: str, home: Path, monkeypatch) -> None:
    """Point huggingface_hub at `endpoint`, with an empty cache under `home`, online. It reads
    these settings once, at import, so its constants are patched as well as the environment."""
    from huggingface_hub import constants

    for name, value in (("HF_ENDPOINT", endpoint), ("HF_HOME", str(home))):
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(constants, "ENDPOINT", endpoint)
    monkeypatch.setattr(
        constants,
        "HUGGINGFACE_CO_URL_TEMPLATE",
        endpoint + "/{repo_id}/resolve/{revision}/{filename}",
    )
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)


def directory_files(directory: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(directory.iterdir()) if path.is_file()}


class HubServer:
    """`with HubServer({"org/name": Repo(...)}) as hub:` serves at `hub.endpoint`; `hub.faults`
    maps a file name to "truncate" or "corrupt"; `hub.requests` counts the file downloads."""

    def __init__(self, repos: dict[str, Repo]):
        self.repos = repos
        self.faults: dict[str, str] = {}
        self.downloads: list[str] = []
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> HubServer:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _handler(self):
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_HEAD(self):
                self._serve(body=False)

            def do_GET(self):
                self._serve(body=True)

            def _error(self, code: str, body: bool) -> None:
                self.send_response(404)
                self.send_header("X-Error-Code", code)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def _json(self, value, body: bool) -> None:
                data = json.dumps(value).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if body:
                    self.wfile.write(data)

            def _serve(self, body: bool) -> None:
                parts = [unquote(p) for p in urlparse(self.path).path.strip("/").split("/")]
                if parts[:2] == ["api", "models"] and len(parts) >= 6:
                    repo_id, kind, revision = "/".join(parts[2:4]), parts[4], parts[5]
                    self._api(repo_id, kind, revision, body)
                elif len(parts) >= 5 and parts[2] == "resolve":
                    self._file("/".join(parts[:2]), parts[3], "/".join(parts[4:]), body)
                else:
                    self._error("RepoNotFound", body)

            def _revision(self, repo_id: str, revision: str, body: bool):
                """(sha, files) of the repo at `revision`, or None after answering 404."""
                repo = hub.repos.get(repo_id)
                if repo is None:
                    return self._error("RepoNotFound", body)
                found = repo.files(revision)
                if found is None:
                    return self._error("RevisionNotFound", body)
                return found

            def _api(self, repo_id: str, kind: str, revision: str, body: bool) -> None:
                found = self._revision(repo_id, revision, body)
                if found is None:
                    return None
                sha, files = found
                if kind == "revision":
                    siblings = [{"rfilename": name} for name in files]
                    return self._json({"id": repo_id, "sha": sha, "siblings": siblings}, body)
                entries = []
                for name, data in files.items():
                    entry = {"type": "file", "path": name, "size": len(data), "oid": _git_oid(data)}
                    if name.endswith(LFS_SUFFIXES):
                        lfs = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data)}
                        entry["lfs"] = {**lfs, "pointerSize": 130}
                    entries.append(entry)
                return self._json(entries, body)

            def _file(self, repo_id: str, revision: str, name: str, body: bool) -> None:
                found = self._revision(repo_id, revision, body)
                if found is None:
                    return None
                sha, files = found
                if name not in files:
                    return self._error("EntryNotFound", body)
                data = files[name]
                self.send_response(200)
                self.send_header("X-Repo-Commit", sha)
                self.send_header("ETag", f'"{_git_oid(data)}"')
                if name.endswith(LFS_SUFFIXES):
                    self.send_header("X-Linked-Etag", f'"{hashlib.sha256(data).hexdigest()}"')
                    self.send_header("X-Linked-Size", str(len(data)))
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if not body:
                    return
                hub.downloads.append(name)
                fault = hub.faults.get(name)
                if fault == "truncate":
                    self.wfile.write(data[: len(data) // 2])
                    self.close_connection = True
                    return
                if fault == "corrupt":
                    data = bytes(b ^ 0xFF for b in data[:64]) + data[64:]
                self.wfile.write(data)

        return Handler


def _git_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
