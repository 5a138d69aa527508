"""A local stand-in for the Hugging Face Hub HTTP API, for tests (which cannot reach the Hub).

It serves the endpoints huggingface_hub's HfApi calls to publish (read from its source: hf_api.py, _commit_api.py,
lfs.py): create repo, tree listing, branch creation, README metadata validation, preupload (upload mode per file),
the LFS batch API with basic single-part PUT transfers, the ndjson commit, repo/model info. Repos live in memory
as branch → {path: file}; LFS objects are stored by sha256 and checked on upload and on commit. Every request is
recorded (method, path, status, whether the expected token came with it — never the token itself) and faults can
be injected (`fail("POST", "/commit/", 503)`). Xet transfers are not spoken: clients set HF_HUB_DISABLE_XET=1 and
huggingface_hub falls back to the LFS protocol the Hub also serves.
"""
from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import yaml

LFS_SUFFIXES = (".safetensors", ".gguf", ".bin", ".pt", ".png")  # the Hub's default .gitattributes patterns (subset)
LFS_MIN_BYTES = 10 * 1024 * 1024  # the Hub stores larger files in LFS whatever their name
REPO = r"(?P<repo>[^/]+/[^/]+)"


@dataclass
class Request:
    method: str
    path: str
    status: int = 0
    authorized: bool = False  # the expected "Bearer <token>" came with it


@dataclass
class Commit:
    oid: str
    branch: str
    summary: str
    description: str
    added: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)


def git_blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(oid: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{oid}\nsize {size}\n".encode()


class HubStub:
    def __init__(self, token: str, base_models: dict[str, dict] | None = None):
        self._token = token
        self.base_models = base_models or {}  # id → cardData, answered by GET /api/models/{id}
        self.repos: dict[str, dict] = {}  # id → {"private": bool, "branches": {name: {path: (bytes|None, lfs oid|None, size)}}}
        self.lfs: dict[str, bytes] = {}
        self.commits: list[Commit] = []
        self.requests: list[Request] = []
        self._faults: list[list] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> "HubStub":
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    def fail(self, method: str, path_regex: str, status: int = 503, times: int = 1, after: bool = False) -> None:
        """Answer `status` to the next `times` matching requests; with after=True the request is applied first (the
        reply is lost, not the request)."""
        self._faults.append([method, re.compile(path_regex), status, times, after])

    def writes(self) -> list[Request]:
        return [r for r in self.requests if r.method in ("POST", "PUT", "DELETE") and r.path != "/api/validate-yaml"]

    def files(self, repo_id: str, branch: str = "main") -> dict[str, bytes]:
        tree = self.repos[repo_id]["branches"][branch]
        return {p: (data if data is not None else self.lfs[oid]) for p, (data, oid, _) in tree.items()}

    # ---- request handling (called from the server's threads) ---------------------------------------------------
    def handle(self, method: str, path: str, query: dict, headers, body: bytes) -> tuple[int, dict, object]:
        for fault in self._faults:
            if fault[0] == method and fault[1].search(path) and fault[3] > 0:
                fault[3] -= 1
                if fault[4]:
                    self._route(method, path, query, headers, body)
                return fault[2], {}, {"error": f"injected {fault[2]}"}
        return self._route(method, path, query, headers, body)

    def _route(self, method: str, path: str, query: dict, headers, body: bytes) -> tuple[int, dict, object]:
        auth = headers.get("authorization")
        anonymous_ok = method == "GET" or path.startswith("/__lfs/") or path == "/api/validate-yaml"
        if auth != f"Bearer {self._token}" and (auth is not None or not anonymous_ok):
            return 401, {"X-Error-Message": "Invalid credentials in Authorization header"}, {"error": "Invalid credentials"}
        routes = [
            ("POST", r"^/api/repos/create$", self._create),
            ("POST", r"^/api/validate-yaml$", self._validate_yaml),
            ("GET", rf"^/api/models/{REPO}/tree/(?P<rev>[^/]+)$", self._tree),
            ("POST", rf"^/api/models/{REPO}/branch/(?P<rev>[^/]+)$", self._branch),
            ("POST", rf"^/api/models/{REPO}/preupload/(?P<rev>[^/]+)$", self._preupload),
            ("POST", rf"^/{REPO}\.git/info/lfs/objects/batch$", self._lfs_batch),
            ("PUT", r"^/__lfs/(?P<oid>[0-9a-f]{64})$", self._lfs_put),
            ("POST", rf"^/api/models/{REPO}/commit/(?P<rev>[^/]+)$", self._commit),
            ("GET", rf"^/api/models/{REPO}(?:/revision/(?P<rev>[^/]+))?$", self._info),
        ]
        for m, pattern, fn in routes:
            match = re.match(pattern, path)
            if m == method and match:
                with self._lock:
                    return fn(body=body, query=query, **match.groupdict())
        return 404, {}, {"error": f"stub: no route for {method} {path}"}

    def _branch_of(self, repo: str, rev: str):
        if repo not in self.repos:
            return None, (404, {"X-Error-Code": "RepoNotFound"}, {"error": "Repository not found"})
        branches = self.repos[repo]["branches"]
        if rev not in branches:
            return None, (404, {"X-Error-Code": "RevisionNotFound"}, {"error": f"Invalid rev id: {rev}"})
        return branches[rev], None

    def _create(self, body, **_):
        payload = json.loads(body)
        repo = f"{payload['organization']}/{payload['name']}"
        if repo in self.repos:
            return 409, {}, {"error": "You already created this model repo", "url": f"{self.url}/{repo}"}
        attrs = b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n*.gguf filter=lfs diff=lfs merge=lfs -text\n"
        self.repos[repo] = {"private": payload.get("visibility") == "private",
                            "branches": {"main": {".gitattributes": (attrs, None, len(attrs))}}}
        return 200, {}, {"url": f"{self.url}/{repo}", "name": repo}

    def _validate_yaml(self, body, **_):
        content = json.loads(body)["content"]
        try:
            meta = yaml.safe_load(content.split("---")[1]) if content.startswith("---") else {}
        except yaml.YAMLError as e:
            return 400, {}, {"errors": [{"message": str(e)}], "warnings": []}
        ok = isinstance(meta, dict)
        return (200, {}, {"errors": [], "warnings": []}) if ok else (400, {}, {"errors": [{"message": "not a mapping"}]})

    def _tree(self, repo, rev, query, **_):
        tree, err = self._branch_of(repo, rev)
        if err:
            return err
        entries = []
        for path, (data, oid, size) in sorted(tree.items()):
            entry = {"type": "file", "path": path, "size": size}
            if oid is None:
                entry["oid"] = git_blob_id(data)
            else:
                pointer = lfs_pointer(oid, size)
                entry.update(oid=git_blob_id(pointer), lfs={"oid": oid, "size": size, "pointerSize": len(pointer)})
            entries.append(entry)
        return 200, {}, entries

    def _branch(self, repo, rev, **_):
        if repo not in self.repos:
            return 404, {"X-Error-Code": "RepoNotFound"}, {"error": "Repository not found"}
        branches = self.repos[repo]["branches"]
        if rev in branches:
            return 409, {}, {"error": "Reference already exists"}
        branches[rev] = dict(branches["main"])
        return 200, {}, {}

    def _preupload(self, repo, rev, body, **_):
        tree, err = self._branch_of(repo, rev)
        if err:
            return err
        files = []
        for f in json.loads(body)["files"]:
            sample = base64.b64decode(f["sample"])
            lfs = f["path"].endswith(LFS_SUFFIXES) or f["size"] >= LFS_MIN_BYTES or b"\0" in sample
            current = tree.get(f["path"])
            oid = None if current is None else (current[1] or git_blob_id(current[0]))
            files.append({"path": f["path"], "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False, "oid": oid})
        return 200, {}, {"files": files}

    def _lfs_batch(self, repo, body, **_):
        if repo not in self.repos:
            return 404, {"X-Error-Code": "RepoNotFound"}, {"message": "Repository not found"}
        objects = []
        for o in json.loads(body)["objects"]:
            entry = {"oid": o["oid"], "size": o["size"], "authenticated": True}
            if o["oid"] not in self.lfs:
                entry["actions"] = {"upload": {"href": f"{self.url}/__lfs/{o['oid']}"}}
            objects.append(entry)
        return 200, {}, {"transfer": "basic", "objects": objects}

    def _lfs_put(self, oid, body, **_):
        if hashlib.sha256(body).hexdigest() != oid:
            return 400, {}, {"error": "sha256 mismatch"}
        self.lfs[oid] = body
        return 200, {}, {}

    def _commit(self, repo, rev, body, **_):
        tree, err = self._branch_of(repo, rev)
        if err:
            return err
        lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
        header = lines[0]["value"]
        staged, commit = dict(tree), Commit("", rev, header["summary"], header.get("description", ""))
        for item in lines[1:]:
            key, v = item["key"], item["value"]
            if key == "file":
                data = base64.b64decode(v["content"])
                staged[v["path"]] = (data, None, len(data))
            elif key == "lfsFile":
                if v["oid"] not in self.lfs:  # the Hub refuses a pointer to content it never received
                    return 422, {}, {"error": f"LFS object {v['oid']} was not uploaded"}
                staged[v["path"]] = (None, v["oid"], len(self.lfs[v["oid"]]))
            elif key == "deletedFile":
                staged.pop(v["path"], None)
            else:
                return 400, {}, {"error": f"stub: unsupported commit operation {key}"}
            (commit.deleted if key == "deletedFile" else commit.added).append(v["path"])
        tree.clear()
        tree.update(staged)
        commit.oid = hashlib.sha1(body).hexdigest()
        self.commits.append(commit)
        return 200, {}, {"commitUrl": f"{self.url}/{repo}/commit/{commit.oid}", "commitOid": commit.oid,
                         "pullRequestUrl": None}

    def _info(self, repo, rev=None, **_):
        if repo in self.base_models:
            card = self.base_models[repo]
            return 200, {}, {"id": repo, "sha": "0" * 40, "cardData": card, "tags": [f"license:{card.get('license')}"]}
        if repo not in self.repos:
            return 404, {"X-Error-Code": "RepoNotFound"}, {"error": "Repository not found"}
        head = next((c.oid for c in reversed(self.commits) if c.branch == (rev or "main")), "0" * 40)
        return 200, {}, {"id": repo, "sha": head, "private": self.repos[repo]["private"]}


def _handler(stub: HubStub):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as the real Hub; every answer carries Content-Length

        def _serve(self):
            url = urlsplit(self.path)
            record = Request(self.command, url.path,
                             authorized=self.headers.get("authorization") == f"Bearer {stub._token}")
            stub.requests.append(record)
            status, headers, payload = stub.handle(self.command, url.path, parse_qs(url.query), self.headers, self._body())
            data = json.dumps(payload).encode()
            record.status = status
            self.send_response(status)
            for k, v in {"Content-Type": "application/json", "Content-Length": str(len(data)), **headers}.items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)

        def _body(self) -> bytes:
            if self.headers.get("transfer-encoding", "").lower() == "chunked":
                chunks = []
                while (size := int(self.rfile.readline().split(b";")[0], 16)) > 0:
                    chunks.append(self.rfile.read(size))
                    self.rfile.readline()
                self.rfile.readline()
                return b"".join(chunks)
            return self.rfile.read(int(self.headers.get("content-length") or 0))

        do_GET = do_POST = do_PUT = do_DELETE = _serve

        def log_message(self, *args):  # quiet: the recorded requests are the log
            pass

    return Handler
