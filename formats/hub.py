"""Publish an export to the Hugging Face Hub: the files plus a model card that shows the evidence, in one commit.

Order matters: everything that can be refused locally (repo id, export, validation report, token) is refused
before the first request, so bad input uploads nothing. The remote tree is then compared with the local files (LFS
sha256, or git blob sha1 for small files); identical files are left alone and an unchanged export makes no commit
at all. Transient failures (5xx, 429, timeouts, dropped connections) retry the whole compare-and-commit step with a
short capped backoff: comparing again first means a commit whose response was lost is not made twice. Those are the
only retries, bounded in total time (formats/hub_retry.py): a dead endpoint costs at most the retry budget (20 s,
ROPECONVERT_HUB_RETRY_SECONDS), one note and one error line. Large files
go through huggingface_hub's own LFS/Xet upload. The token is handed to huggingface_hub and to nothing else: it is
never printed, logged, or written into the card, the plan or any file.
"""
from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from huggingface_hub.errors import HfHubHTTPError

from ropeconvert import __version__
from ropeconvert.errors import InputError, RopeConvertError
from ropeconvert.formats.hub_base import base_model_id, resolve_license, transport_errors
from ropeconvert.formats.source import is_hub_id
from ropeconvert.formats.export import CARD
from ropeconvert.formats.hub_export import Publication, load_export
from ropeconvert.formats.hub_retry import RetriesSpent, in_chain, with_retries
from ropeconvert.formats.model_card import render_card

KEEP_REMOTE = (".gitattributes",)  # the Hub's own file in every repo: never deleted


class HubError(RopeConvertError):
    """The Hub refused the upload or could not be reached."""


@dataclass
class PlannedFile:
    path: str
    size: int
    action: str  # add, update, unchanged, delete


@dataclass
class PublishResult:
    repo_id: str
    revision: str
    dry_run: bool
    validation: str  # passed, failed, missing, stale
    card_path: Path
    commit_message: str
    files: list[PlannedFile]
    created: bool = False
    unchanged: bool = False
    commit_url: str | None = None  # None after a retry whose first commit landed with its reply lost
    commit_sent: bool = False
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["card_path"] = str(self.card_path)
        return out

    def lines(self) -> list[str]:
        """What the CLI prints: the plan (dry run) or what happened."""
        sent = [f for f in self.files if f.action != "unchanged"]
        total = _size(sum(f.size for f in sent if f.action != "delete"))
        where = f"{self.repo_id}@{self.revision}"
        if self.dry_run:
            out = ["dry run: nothing was uploaded", f"repo      {self.repo_id} (model; created if missing)",
                   f"revision  {self.revision}", f"commit    {self.commit_message}", f"files     {len(sent)}, {total}:"]
            out += [f"  {f.action:<6} {f.path:<40} {_size(f.size):>10}" for f in self.files]
        elif self.unchanged:
            out = [f"{where} is up to date: no commit made"]
        else:
            out = ([f"created {self.repo_id}"] if self.created else []) + \
                  [f"committed {len(sent)} file(s), {total}, to {where}" + (f": {self.commit_url}" if self.commit_url else "")]
            out += [f"  {f.action:<6} {f.path}" for f in sent]
        out.append(f"card      {self.card_path}" if self.dry_run else f"card: {self.card_path}")
        return out + [f"note: {n}" for n in self.notes]


def check_repo_id(repo_id: str) -> str:
    """ORG/NAME under the Hub's naming rules (huggingface_hub's own validator), refused in one line."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    if repo_id.count("/") != 1:
        raise InputError(f"invalid Hub repo id {repo_id!r}: it must be ORG/NAME", "e.g. --repo my-org/smollm2-yarn-16k")
    try:
        validate_repo_id(repo_id)
    except HFValidationError:
        raise InputError(f"invalid Hub repo id {repo_id!r}",
                         "use letters, digits, '-', '_' and '.', at most 96 characters, no '--' or '..', "
                         "not starting or ending with '-' or '.'") from None
    return repo_id


def preflight(repo_id: str, dry_run: bool = False, token: str | None = None) -> str | None:
    """Everything about the target checked before any work or request: the repo id, offline mode, the token."""
    import huggingface_hub
    from huggingface_hub import constants

    check_repo_id(repo_id)
    if dry_run:
        return token
    offline = constants.is_offline_mode() if hasattr(constants, "is_offline_mode") else constants.HF_HUB_OFFLINE
    if offline:
        raise HubError("HF_HUB_OFFLINE is set, so nothing can be uploaded", "unset HF_HUB_OFFLINE, or use --dry-run")
    token = token or huggingface_hub.get_token()  # HF_TOKEN first, then the cached login
    if not token:
        raise InputError("no Hugging Face token found", "set HF_TOKEN or run `hf auth login` with a write token "
                                                        "(--dry-run needs none)")
    return token


def publish(export: Path, repo_id: str, *, private: bool = False, revision: str | None = None, dry_run: bool = False,
            skip_validation: bool = False, token: str | None = None, progress: bool = True,
            log: Callable[[str], None] | None = None, base_model: str | None = None) -> PublishResult:
    """Render the card and upload the export in one commit (or, with dry_run, only plan it and write the card)."""
    import huggingface_hub
    from huggingface_hub import HfApi, constants

    check_repo_id(repo_id)
    exp = load_export(export)
    if exp.status != "passed" and not skip_validation:
        fix = {"failed": f"see the checks in {exp.report_dir / 'report.md'}; --skip-validation publishes it anyway "
                         f"and the card then shows the failure",
               "missing": f"run `ropeconvert validate {exp.path}` first, or pass --skip-validation (the card then "
                          f"says it is not validated)",
               "stale": f"re-run `ropeconvert validate {exp.path}`",
               "unextended": f"validate at lengths past the original context (e.g. `ropeconvert validate {exp.path}` "
                             f"with its default lengths), or pass --skip-validation (the card then says so)"}[exp.status]
        raise InputError(f"refusing to publish {exp.path}: {exp.status_detail}", fix)
    token = preflight(repo_id, dry_run, token)
    offline = constants.is_offline_mode() if hasattr(constants, "is_offline_mode") else constants.HF_HUB_OFFLINE
    if not progress:
        huggingface_hub.utils.disable_progress_bars()
    api = HfApi(token=token)
    if base_model is not None and not is_hub_id(base_model):
        raise InputError(f"--base-model {base_model!r} is not a Hub id", "pass ORG/NAME of the model this was made from")
    recorded = exp.provenance.get("base_model")
    base_id = base_model or (recorded if is_hub_id(recorded) else None) \
        or base_model_id(exp.provenance.get("source"))
    license_fields, license_note = resolve_license(exp.provenance, base_id, online=not offline, api=api)
    card = render_card(exp, repo_id=repo_id, base_id=base_id, license_fields=license_fields, license_note=license_note)
    exp.card_path.write_text(card, encoding="utf-8")  # beside the export, so what is local is what is published
    files = {**exp.files, CARD: exp.card_path}
    branch = revision or constants.DEFAULT_REVISION
    result = PublishResult(repo_id, branch, dry_run, exp.status, exp.card_path, _commit_message(exp),
                           [PlannedFile(p, f.stat().st_size, "add") for p, f in files.items()],
                           notes=[license_note] if license_note else [])
    if dry_run:
        return result
    try:
        return with_retries(lambda: _push_once(api, exp, files, result, private, revision), log or (lambda m: None))
    except Exception as e:  # huggingface_hub wraps some failures (an LFS upload's RuntimeError): look at the causes
        tried = f" after {e}" if isinstance(e, RetriesSpent) else ""  # "after 8 tries in 20 s"
        if (http := in_chain(e, HfHubHTTPError)) is not None:
            error = _hub_error(http, repo_id)
            error.problem += tried
            raise error from None
        if (net := in_chain(e, transport_errors())) is not None:
            raise HubError(f"cannot reach the Hub at {constants.ENDPOINT} ({type(net).__name__}){tried}",
                           "check the network (or HF_ENDPOINT) and run the same command again") from None
        raise


def _push_once(api, exp: Publication, files: dict[str, Path], result: PublishResult, private: bool,
               revision: str | None) -> PublishResult:
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete

    remote = _remote_files(api, result, private, revision)
    ops, planned = [], []
    for path, local in files.items():
        size = local.stat().st_size
        if path in remote and _same_content(local, remote[path]):
            planned.append(PlannedFile(path, size, "unchanged"))
            continue
        ops.append(CommitOperationAdd(path_in_repo=path, path_or_fileobj=str(local)))
        planned.append(PlannedFile(path, size, "update" if path in remote else "add"))
    for path, info in remote.items():  # the repo mirrors the export: a stale shard must not linger beside new ones
        if path not in files and path not in KEEP_REMOTE:
            ops.append(CommitOperationDelete(path_in_repo=path))
            planned.append(PlannedFile(path, info.size, "delete"))
    if not ops:
        if result.commit_sent:  # an earlier attempt's commit landed and only its reply was lost: not made twice
            result.notes.append("the Hub applied the commit of an earlier attempt whose reply was lost")
        else:
            result.files, result.unchanged = planned, True
        return result
    result.files, result.commit_sent = planned, True
    info = api.create_commit(result.repo_id, ops, commit_message=result.commit_message,
                             commit_description=_commit_description(exp), revision=revision)
    result.commit_url = info.commit_url
    return result


def _remote_files(api, result: PublishResult, private: bool, revision: str | None) -> dict[str, Any]:
    """Path → RepoFile on the target branch, creating the repo and the branch when missing."""
    from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError
    from huggingface_hub.hf_api import RepoFile

    for _ in range(3):
        try:
            tree = api.list_repo_tree(result.repo_id, recursive=True, revision=revision)
            return {f.path: f for f in tree if isinstance(f, RepoFile)}
        except RevisionNotFoundError:  # before RepositoryNotFoundError: a missing branch of an existing repo
            api.create_branch(result.repo_id, branch=revision, exist_ok=True)
        except RepositoryNotFoundError:
            api.create_repo(result.repo_id, private=private, exist_ok=True)  # exist_ok: a retried, lost response
            result.created = True
    raise HubError(f"{result.repo_id}@{result.revision} still cannot be listed after creating it",
                   "check the repo on the Hub and run the same command again")


def _same_content(local: Path, remote) -> bool:
    if local.stat().st_size != remote.size:
        return False
    if remote.lfs is not None:
        return _digest(local, hashlib.sha256()) == remote.lfs.sha256
    h = hashlib.sha1()  # a git blob id: sha1 over "blob <size>\0" + content
    h.update(f"blob {remote.size}\0".encode())
    return _digest(local, h) == remote.blob_id


def _digest(path: Path, h) -> str:
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _hub_error(e, repo_id: str) -> HubError:
    """One line from a Hub HTTP error: the status and the server's message (never the request's headers)."""
    status = getattr(getattr(e, "response", None), "status_code", None)
    if status == 401:
        return HubError("the Hub rejected the token (401 Unauthorized)", "set HF_TOKEN or run `hf auth login` with a valid write token")
    if status == 403:
        return HubError(f"the token may not write to {repo_id} (403 Forbidden)",
                        "use a write token that belongs to that user or organisation")
    server = getattr(e, "server_message", None) or str(e).splitlines()[0]
    return HubError(f"the Hub refused the upload to {repo_id} ({status}: {server})", "fix the cause above and run the same command again")


def _size(n: int) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


def _commit_message(exp: Publication) -> str:
    spec = exp.spec or {}
    if not spec:
        return f"Upload {exp.path.name} (ropeconvert {__version__})"
    orig = (spec.get("base") or {}).get("original_context")
    return f"Upload {spec['method']} {orig} → {spec['target_context']} context extension (ropeconvert {__version__})"


def _commit_description(exp: Publication) -> str:
    if exp.status == "passed":
        return "Validated: base vs extended measurements are in report.json and the model card."
    return f"Not validated ({exp.status_detail}); published with --skip-validation."
