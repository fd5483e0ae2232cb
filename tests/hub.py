"""A loopback stand-in for the Hugging Face Hub, for tests.

The project's downloads are tested against the real `huggingface_hub` client (and the project's own urllib
fetcher) speaking HTTP to 127.0.0.1, never against a mock: what the client really sends and expects is what gets
exercised - HEAD then GET on /resolve, a 302 to a CDN on another host for LFS files (the token must not follow it),
X-Repo-Commit / ETag / X-Linked-Etag / X-Linked-Size, Range resumes, X-Error-Code on errors. No Xet headers are
ever sent, so the client always downloads over plain HTTP.

    with LocalHub(token="hf_test") as hub:
        commit = hub.add_repo("org/model", {"config.json": b"{}", "model.safetensors": weights}, gated=True)
        hf_hub_download("org/model", "model.safetensors", endpoint=hub.endpoint, token="hf_test", cache_dir=tmp)
        assert all(auth is None for host, _, _, auth in hub.requests if host == "cdn")
"""

from __future__ import annotations

import hashlib
import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, quote, unquote, urlsplit

_DATE = "2024-01-01T00:00:00.000Z"


class _File:
    def __init__(self, name: str, data: bytes, lfs: bool):
        self.name, self.data, self.sha256 = name, data, hashlib.sha256(data).hexdigest()
        pointer = f"version https://git-lfs.github.com/spec/v1\noid sha256:{self.sha256}\nsize {len(data)}\n"
        self.pointer = pointer.encode() if lfs else None
        blob = self.pointer or data  # git's blob id of an LFS file is its pointer's, as on the Hub
        self.oid = hashlib.sha1(b"blob %d\0" % len(blob) + blob).hexdigest()

    def entry(self) -> dict:  # the /tree and /paths-info format
        e = {"type": "file", "oid": self.oid, "size": len(self.data), "path": self.name}
        if self.pointer:
            e["lfs"] = {"oid": self.sha256, "size": len(self.data), "pointerSize": len(self.pointer)}
        return e

    def sibling(self) -> dict:  # the model_info(files_metadata=True) format
        s = {"rfilename": self.name, "size": len(self.data), "blobId": self.oid}
        if self.pointer:
            s["lfs"] = {"sha256": self.sha256, "size": len(self.data), "pointerSize": len(self.pointer)}
        return s


class _Repo:
    def __init__(self, branch: str):
        self.default, self.gated = branch, False
        self.refs: dict[str, str] = {}
        self.commits: dict[str, dict[str, _File]] = {}

    def commit(self, rev: str) -> str | None:
        return self.refs.get(rev) or (rev if rev in self.commits else None)


class LocalHub:
    """The Hub at `endpoint` and its CDN at `cdn`, two ThreadingHTTPServers on 127.0.0.1 in daemon threads."""

    def __init__(self, token: str | None = None, lfs_min_bytes: int = 1024):
        self.token, self.lfs_min_bytes = token, lfs_min_bytes
        self.requests: list[tuple[str, str, str, str | None]] = []  # (hub|cdn, method, path without query, auth)
        self.endpoint = self.cdn = ""
        self._lock = threading.Lock()
        self._repos: dict[str, _Repo] = {}
        self._corrupt: dict[tuple[str, str], bytes] = {}
        self._truncate: dict[tuple[str, str], int] = {}
        self._fail: dict[tuple[str, str, str], list[int]] = {}
        self._servers: list[ThreadingHTTPServer] = []
        self._conns: set = set()  # open keep-alive sockets, dropped by close() so that nothing answers after it

    def start(self) -> LocalHub:
        for label in ("hub", "cdn"):
            server = ThreadingHTTPServer(("127.0.0.1", 0), type("Handler", (_Handler,), {"hub": self, "label": label}))
            server.daemon_threads = True
            threading.Thread(target=server.serve_forever, name=f"local-{label}", daemon=True).start()
            self._servers.append(server)
        self.endpoint, self.cdn = (f"http://127.0.0.1:{s.server_address[1]}" for s in self._servers)
        return self

    def close(self) -> None:
        for server in self._servers:
            server.shutdown()
            server.server_close()
        self._servers.clear()
        with self._lock:
            for conn in self._conns:
                try:
                    conn.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    __enter__ = start

    def __exit__(self, *exc) -> None:
        self.close()

    def set_token(self, token: str | None) -> None:
        self.token = token

    def add_repo(
        self,
        repo_id: str,
        files: dict[str, bytes] | Path,
        commit: str | None = None,
        branch: str = "main",
        gated: bool = False,
    ) -> str:
        """Register `files` (name -> bytes, or a directory taken recursively) as `commit` of `repo_id`, which
        `branch` then points at. Default commit: a sha1 of the content. Gating applies to the whole repo."""
        if isinstance(files, (str, Path)):
            root = Path(files)
            files = {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}
        tree = {n: _File(n, d, n.endswith(".safetensors") or len(d) >= self.lfs_min_bytes) for n, d in files.items()}
        listing = "".join(f"{n}\0{f.sha256}\n" for n, f in sorted(tree.items()))
        commit = commit or hashlib.sha1(listing.encode()).hexdigest()
        with self._lock:
            repo = self._repos.setdefault(repo_id, _Repo(branch))
            repo.commits[commit], repo.refs[branch], repo.gated = tree, commit, gated
        return commit

    def corrupt(self, repo_id: str, filename: str, data: bytes) -> None:
        """GETs of the file answer `data`; all metadata (HEAD, sizes, hashes, ETags) still describe the original."""
        with self._lock:
            self._corrupt[repo_id, filename] = data

    def truncate(self, repo_id: str, filename: str, n_bytes: int) -> None:
        """The next GET of the file's bytes announces the full length, sends `n_bytes` of them and hangs up."""
        with self._lock:
            self._truncate[repo_id, filename] = n_bytes

    def fail(self, repo_id: str, filename: str, status: int = 503, times: int = 1, method: str = "GET") -> None:
        """The next `times` requests for the file answer `status`: GETs on the host serving its bytes (the CDN for
        an LFS file), or with method="HEAD" the client's metadata HEADs on the hub's /resolve."""
        with self._lock:
            self._fail[repo_id, filename, method] = [status, times]

    def _failing(self, repo_id: str, filename: str, method: str) -> int | None:
        with self._lock:
            fail = self._fail.get((repo_id, filename, method))
            if fail and fail[1] > 0:
                fail[1] -= 1
                return fail[0]
            return None

    def _take(self, repo_id: str, filename: str) -> tuple[bytes | None, int | None]:
        """(corrupt data, truncation) for a GET; a truncation happens once."""
        with self._lock:
            return self._corrupt.get((repo_id, filename)), self._truncate.pop((repo_id, filename), None)


class _Handler(BaseHTTPRequestHandler):
    hub: LocalHub
    label: str
    protocol_version = "HTTP/1.1"  # keep-alive, as the client's pool expects; every answer has a Content-Length

    def log_message(self, *args) -> None:
        pass

    def setup(self) -> None:
        super().setup()
        with self.hub._lock:
            self.hub._conns.add(self.connection)

    def handle(self) -> None:
        try:
            super().handle()
        except ConnectionError:  # the client, or close(), hung up
            pass

    def finish(self) -> None:
        with self.hub._lock:
            self.hub._conns.discard(self.connection)
        super().finish()

    def do_HEAD(self) -> None:
        self._route("HEAD")

    def do_GET(self) -> None:
        self._route("GET")

    def do_POST(self) -> None:
        self._route("POST")

    def _send(self, status: int, headers: dict, body: bytes = b"", method: str = "GET", cut: int | None = None) -> None:
        self.send_response(status)
        for k, v in {"Content-Length": str(len(body)), **headers}.items():
            self.send_header(k, v)
        self.end_headers()
        if method != "HEAD":
            self.wfile.write(body if cut is None else body[:cut])
        if cut is not None:
            self.close_connection = True  # a short body, then the connection drops: a transient network failure

    def _error(self, status: int, code: str | None, message: str, method: str, **headers) -> None:
        body = json.dumps({"error": message}).encode()
        headers |= {"Content-Type": "application/json", "X-Error-Message": message}
        self._send(status, {**headers, **({"X-Error-Code": code} if code else {})}, body, method)

    def _json(self, data, method: str) -> None:
        self._send(200, {"Content-Type": "application/json"}, json.dumps(data).encode(), method)

    def _route(self, method: str) -> None:
        hub, url, auth = self.hub, urlsplit(self.path), self.headers.get("Authorization")
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        with hub._lock:
            hub.requests.append((self.label, method, url.path, auth))
            repos = dict(hub._repos)
        seg = [unquote(s) for s in url.path.split("/")[1:]]
        api = seg[:2] == ["api", "models"] and self.label == "hub"
        if self.label == "cdn" and seg[:1] == ["lfs"]:
            seg = seg[1:]
        elif not api and "resolve" not in seg[1:3]:
            return self._error(404, None, "Not Found", method)
        seg = seg[2:] if api else seg
        repo_id = next((r for r in ("/".join(seg[:2]), seg[0] if seg else "") if r in repos), None)
        if repo_id is None:
            return self._error(404, "RepoNotFound", "Repository not found", method)
        repo, rest = repos[repo_id], seg[len(repo_id.split("/")) :]
        if self.label == "hub" and repo.gated and (hub.token is None or auth != f"Bearer {hub.token}"):
            msg = f"Access to model {repo_id} is restricted. You must be authenticated to access it."
            return self._error(401, "GatedRepo", msg, method)
        if self.label == "cdn":  # /lfs/{repo}/{commit}/{filename}: a signed URL, in spirit
            f = repo.commits.get(rest[0], {}).get("/".join(rest[1:])) if rest else None
            return self._serve(repo_id, f, rest[0], method) if f else self._error(404, None, "NoSuchKey", method)
        kind, rev = (rest + ["", ""])[:2] if rest else ("revision", repo.default)
        commit = repo.commit(rev)
        if kind not in ("revision", "tree", "paths-info", "resolve") or (kind != "resolve") != api:
            return self._error(404, None, "Not Found", method)
        if commit is None:
            return self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}", method)
        files, path = repo.commits[commit], "/".join(rest[2:])
        if kind == "revision":
            blobs = parse_qs(url.query).get("blobs", [""])[0].lower() in ("true", "1")
            siblings = [f.sibling() if blobs else {"rfilename": f.name} for f in files.values()]
            return self._json(
                {
                    "_id": commit[:24],
                    "id": repo_id,
                    "modelId": repo_id,
                    "author": repo_id.split("/")[0],
                    "sha": commit,
                    "private": False,
                    "gated": "manual" if repo.gated else False,
                    "disabled": False,
                    "downloads": 0,
                    "likes": 0,
                    "tags": [],
                    "lastModified": _DATE,
                    "createdAt": _DATE,
                    "siblings": siblings,
                },
                method,
            )
        entries = {f.name: f.entry() for f in files.values()}
        for name in files:  # the folders, implied by the file names
            for i in range(name.count("/")):
                d = name.rsplit("/", i + 1)[0]
                oid = hashlib.sha1(f"{commit}:{d}".encode()).hexdigest()
                entries[d] = {"type": "directory", "oid": oid, "size": 0, "path": d}
        if kind == "paths-info":
            wanted = (
                json.loads(body)
                if self.headers.get("Content-Type", "").startswith("application/json")
                else parse_qs(body.decode(), keep_blank_values=True)
            ).get("paths", [])
            return self._json([entries[p] for p in wanted if p in entries], method)
        if kind == "tree":
            recursive = parse_qs(url.query).get("recursive", [""])[0].lower() in ("true", "1")
            under = [e for p, e in sorted(entries.items()) if not path or p.startswith(path + "/")]
            if path and path not in entries:
                return self._error(404, "EntryNotFound", f"{path} not found", method, **{"X-Repo-Commit": commit})
            depth = path.count("/") + 1 if path else 0
            return self._json([e for e in under if recursive or e["path"].count("/") == depth], method)
        f = files.get(path)
        if f is None:
            return self._error(404, "EntryNotFound", "Entry not found", method, **{"X-Repo-Commit": commit})
        if method == "HEAD" and (status := hub._failing(repo_id, f.name, method)):
            return self._error(status, None, f"Injected failure ({status})", method)
        if f.pointer is None:
            return self._serve(repo_id, f, commit, method)
        self._send(
            302,
            {
                "Location": f"{hub.cdn}/lfs/{repo_id}/{commit}/{quote(f.name)}",
                "X-Repo-Commit": commit,
                "ETag": f'"{f.oid}"',
                "X-Linked-Etag": f'"{f.sha256}"',
                "X-Linked-Size": str(len(f.data)),
            },
            method=method,
        )

    def _serve(self, repo_id: str, f: _File, commit: str, method: str) -> None:
        """The file's bytes, honouring `Range: bytes=N-` / `bytes=N-M` (206), and the test hooks."""
        if method == "GET" and (status := self.hub._failing(repo_id, f.name, method)):
            return self._error(status, None, f"Injected failure ({status})", method)
        data, cut = self.hub._take(repo_id, f.name) if method == "GET" else (None, None)
        data = f.data if data is None else data
        headers = {
            "Content-Type": "application/octet-stream",
            "Accept-Ranges": "bytes",
            "X-Repo-Commit": commit,
            "ETag": f'"{f.sha256 if f.pointer else f.oid}"',
        }
        spec = self.headers.get("Range", "")
        if not spec.startswith("bytes="):
            return self._send(200, headers, data, method, cut)
        first, _, last = spec[6:].partition("-")
        size = len(data)
        start, end = (int(first), int(last) if last else size - 1) if first else (size - int(last), size - 1)
        start, end = max(start, 0), min(end, size - 1)
        if start >= size or start > end:
            return self._send(416, {**headers, "Content-Range": f"bytes */{size}"}, b"", method)
        headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        self._send(206, headers, data[start : end + 1], method, cut)
