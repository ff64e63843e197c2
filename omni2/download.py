"""Fetch the official LLaMA-Omni2 checkpoints into ``checkpoints/`` (resumable, with progress bars).

Four parts, each into its own sub-folder of the destination:

* ``model``   - an ``ICTNLP/LLaMA-Omni2-*`` Hub repo -> ``<dest>/<repo name>/``
* ``decoder`` - the token->wav files of ``ICTNLP/cosy2_decoder`` -> ``<dest>/cosy2_decoder/``
* ``whisper`` - openai-whisper's ``large-v3.pt`` (sha256-checked) -> ``<dest>/speech_encoder/``
* ``voices``  - the official prompt wavs of the GitHub repo -> ``<dest>/voices/``

Hub repos go through ``huggingface_hub.snapshot_download`` (which resumes and skips complete files);
plain URLs through :func:`fetch_url` (HTTP Range on a ``.part`` file, then an atomic rename).
Everything the network decides is read at call time (``HF_ENDPOINT``, ``HF_HUB_OFFLINE``,
``OMNI2_WHISPER_URL``, ``OMNI2_VOICES_URL``) so tests and users can redirect it. When files cannot be
fetched, one :class:`~omni2.errors.CheckpointError` names each missing file and its full target path.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import logging
import os
import re
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote, urlsplit

from omni2.errors import CheckpointError

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DEST = REPO_ROOT / "checkpoints"
DEFAULT_ENDPOINT = "https://huggingface.co"

ORG = "ICTNLP"
MODEL_PREFIX = "LLaMA-Omni2-"
MODEL_SIZES = ("0.5B", "1.5B", "3B", "7B", "14B")
BILINGUAL_SIZES = (*MODEL_SIZES, "32B")
KNOWN_MODELS: tuple[str, ...] = tuple(f"{ORG}/{MODEL_PREFIX}{s}" for s in MODEL_SIZES) + tuple(
    f"{ORG}/{MODEL_PREFIX}{s}-Bilingual" for s in BILINGUAL_SIZES
)
DEFAULT_MODEL = f"{ORG}/{MODEL_PREFIX}0.5B"
# Everything a model folder needs (weights, configs, both tokenizers, the chat template), none of
# the duplicate pickled weights some repos also carry. fnmatch's "*" also crosses "/".
MODEL_PATTERNS: tuple[str, ...] = (
    "*.json",
    "*.safetensors",
    "*.txt",
    "*.model",
    "*.tiktoken",
    "*.jinja",
    "tts_tokenizer/*",
    "README.md",
    "LICENSE*",
)

DECODER_REPO = f"{ORG}/cosy2_decoder"
DECODER_DIR = "cosy2_decoder"
# Only what token->wav needs (spec §2.5); CosyVoice-BlankEN/, speech_tokenizer_v2.onnx, the onnx/TensorRT
# estimators and the zipped encoder (~2.5 GB together) are never used by omni2.
DECODER_FILES: tuple[str, ...] = ("cosyvoice.yaml", "flow.pt", "hift.pt", "campplus.onnx")

# The URL openai-whisper itself uses (``whisper._MODELS["large-v3"]``); the folder before the file
# name is the file's SHA256, which whisper checks and so do we.
WHISPER_URL = (
    "https://openaipublic.azureedge.net/main/whisper/models/"
    "e5b1a55b89c1367dacf97e3e19bfd829a01529dbfdeefa8caeb59b3f1b81dadb/large-v3.pt"
)
WHISPER_DIR = "speech_encoder"
WHISPER_FILE = "large-v3.pt"

# Official default voices (speaker prompts) in the GitHub repo, raw files of the main branch.
VOICES_URL = "https://raw.githubusercontent.com/ictnlp/LLaMA-Omni2/main/llama_omni2/inference/"
VOICES_DIR = "voices"
VOICE_FILES: tuple[str, ...] = ("prompt_en.wav", "prompt_zh.wav")

PARTS: tuple[str, ...] = ("model", "decoder", "whisper", "voices")

ENV_ENDPOINT = "HF_ENDPOINT"
ENV_WHISPER_URL = "OMNI2_WHISPER_URL"
ENV_VOICES_URL = "OMNI2_VOICES_URL"
ENV_OFFLINE = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")

NETWORK_TIMEOUT_S = 30.0
RESUME_ATTEMPTS = 3
RESUME_BACKOFF_S = 2.0
_CHUNK = 1 << 20
_SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class MissingFile:
    """A file that is not in place after a run: what it is, where it belongs, where it comes from."""

    part: str
    name: str
    target: Path
    source: str
    reason: str
    hint: str = ""


@dataclass
class DownloadResult:
    """What a run did: files fetched now, files already in place, and what is still missing."""

    dest: Path
    fetched: list[Path] = field(default_factory=list)
    present: list[Path] = field(default_factory=list)
    missing: list[MissingFile] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------
# Settings read at call time
# ---------------------------------------------------------------------------------------------
def _is_true(value: str | None) -> bool:
    return (value or "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def offline_from_env() -> bool:
    """``HF_HUB_OFFLINE``/``TRANSFORMERS_OFFLINE`` as set now (huggingface_hub reads them only at import)."""
    return any(_is_true(os.environ.get(name)) for name in ENV_OFFLINE)


def hub_endpoint(endpoint: str | None = None) -> str:
    """The Hub base URL: the argument, else ``HF_ENDPOINT`` as set now, else huggingface.co."""
    return (endpoint or os.environ.get(ENV_ENDPOINT) or DEFAULT_ENDPOINT).rstrip("/")


def whisper_url(url: str | None = None) -> str:
    return url or os.environ.get(ENV_WHISPER_URL) or WHISPER_URL


def voices_url(url: str | None = None) -> str:
    base = url or os.environ.get(ENV_VOICES_URL) or VOICES_URL
    return base if base.endswith("/") else base + "/"


def sha256_from_url(url: str) -> str | None:
    """openai-whisper's convention: the path component before the file name is its SHA256."""
    parts = urlsplit(url).path.rstrip("/").split("/")
    if len(parts) >= 2 and _SHA256.fullmatch(parts[-2].lower()):
        return parts[-2].lower()
    return None


def resolve_model_repo(name: str, allow_any_repo: bool = False) -> str:
    """Map a model name to its Hub repo id, refusing unknown names unless ``allow_any_repo``.

    Accepts the full id (``ICTNLP/LLaMA-Omni2-7B-Bilingual``), the repo name
    (``LLaMA-Omni2-7B-Bilingual``) or just the size (``7B-Bilingual``), case-insensitively.
    """
    raw = name.strip()
    candidate = raw if "/" in raw else f"{ORG}/{raw}"
    owner, _, repo = candidate.partition("/")
    if owner.lower() == ORG.lower() and not repo.lower().startswith(MODEL_PREFIX.lower()):
        candidate = f"{owner}/{MODEL_PREFIX}{repo}"
    by_lower = {known.lower(): known for known in KNOWN_MODELS}
    if candidate.lower() in by_lower:
        return by_lower[candidate.lower()]
    if allow_any_repo:
        if not re.fullmatch(r"[\w.-]+/[\w.-]+", raw):
            raise CheckpointError(f"--model {name!r} is not a Hub repo id of the form owner/name.")
        return raw
    known = ", ".join(k.split("/", 1)[1].removeprefix(MODEL_PREFIX) for k in KNOWN_MODELS)
    raise CheckpointError(
        f"Unknown model {name!r}. Known LLaMA-Omni2 models ({ORG}/{MODEL_PREFIX}<size>): {known}. "
        "Pass --allow-any-repo to download another Hub repo anyway."
    )


def model_dir_name(repo_id: str) -> str:
    """Folder name under the destination: the repo name without its owner."""
    return repo_id.rsplit("/", 1)[-1]


# ---------------------------------------------------------------------------------------------
# Local layout checks (work offline)
# ---------------------------------------------------------------------------------------------
def _tokenizer_missing(folder: Path, prefix: str) -> list[str]:
    missing = [] if (folder / "tokenizer_config.json").is_file() else [f"{prefix}tokenizer_config.json"]
    has_fast = (folder / "tokenizer.json").is_file()
    has_bpe = (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file()
    if not (has_fast or has_bpe):
        missing.append(f"{prefix}vocab.json + {prefix}merges.txt (or {prefix}tokenizer.json)")
    return missing


def missing_model_files(folder: Path) -> list[str]:
    """Names (relative to ``folder``) of what an official model folder lacks; [] when complete.

    Checks config.json, generation_config.json, the weights (model.safetensors, or every shard the
    index names), the LLM tokenizer and tts_tokenizer/.
    """
    missing = [n for n in ("config.json", "generation_config.json") if not (folder / n).is_file()]
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            missing.append("model.safetensors.index.json (unreadable: download it again)")
        else:
            missing += [s for s in shards if not (folder / s).is_file()]
    elif not (folder / "model.safetensors").is_file():
        if any(folder.glob("model-*-of-*.safetensors")):
            missing.append("model.safetensors.index.json")
        else:
            missing.append(
                "model.safetensors (or model-0000x-of-0000y.safetensors + model.safetensors.index.json)"
            )
    missing += _tokenizer_missing(folder, "")
    missing += _tokenizer_missing(folder / "tts_tokenizer", "tts_tokenizer/")
    return missing


def is_wav(path: Path) -> bool:
    """True when the file starts like a RIFF/WAVE file (catches HTML error pages and LFS pointers)."""
    try:
        with open(path, "rb") as f:
            head = f.read(12)
    except OSError:
        return False
    return len(head) == 12 and head[:4] == b"RIFF" and head[8:12] == b"WAVE"


def file_sha256(path: Path, progress: bool = False) -> str:
    """Hex SHA256 of a file, read in chunks (with a progress bar for the big Whisper file)."""
    h = hashlib.sha256()
    size = path.stat().st_size
    with open(path, "rb") as f, _bar(size, 0, f"sha256 {path.name}", progress and size > 64 * _CHUNK) as bar:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
            bar.update(len(chunk))
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------
# Plain-URL downloads
# ---------------------------------------------------------------------------------------------
class _Interrupted(Exception):
    """The transfer stopped early after making progress: worth resuming from the .part file."""


@contextlib.contextmanager
def _bar(total: int | None, initial: int, desc: str, enabled: bool) -> Iterator[_NullBar]:
    if not enabled:
        yield _NullBar()
        return
    from tqdm import tqdm

    with tqdm(total=total, initial=initial, desc=desc, unit="B", unit_scale=True, unit_divisor=1024) as bar:
        yield bar  # type: ignore[misc]


class _NullBar:
    def update(self, n: int) -> None:
        pass


def _describe_url_error(url: str, exc: BaseException) -> str:
    host = urlsplit(url).netloc or url
    if isinstance(exc, urllib.error.HTTPError):
        return f"{host} answered HTTP {exc.code} {exc.reason} for {url}"
    reason = getattr(exc, "reason", None) or exc
    return f"cannot reach {host} ({reason})"


def _fetch_once(url: str, part: Path, desc: str, progress: bool, timeout: float) -> None:
    """One GET into ``part``, continuing after its current size when the server honours Range."""
    offset = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": "omni2-download", "Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        resp = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:
            # Nothing left after `offset`: the .part is complete if the server says so, else stale.
            total = (exc.headers.get("Content-Range") or "").rpartition("/")[2]
            if total.isdigit() and int(total) == offset:
                return
            part.unlink()
            raise _Interrupted("stale partial file discarded") from exc
        raise
    with resp:
        mode = "ab"
        if offset and resp.status == 206:
            start = re.match(r"bytes (\d+)-", resp.headers.get("Content-Range") or "")
            if not start or int(start.group(1)) != offset:
                part.unlink()
                raise _Interrupted("server resumed at an unexpected offset; restarting")
            log.info("resuming %s at byte %d", part.name.removesuffix(".part"), offset)
        elif offset:
            log.info(
                "%s ignored the Range request; downloading %s from the start", urlsplit(url).netloc, desc
            )
            mode, offset = "wb", 0
        length = resp.headers.get("Content-Length")
        total = offset + int(length) if length and length.isdigit() else None
        received = 0
        with open(part, mode) as f, _bar(total, offset, desc, progress) as bar:
            try:
                while chunk := resp.read(_CHUNK):
                    f.write(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
            except (OSError, http.client.HTTPException) as exc:
                if received:
                    raise _Interrupted(f"connection dropped after {received} bytes ({exc})") from exc
                raise
    size = part.stat().st_size
    if total is not None and size != total:
        if received:
            raise _Interrupted(f"got {size} of {total} bytes")
        raise OSError(f"got {size} of {total} bytes")


def fetch_url(
    url: str,
    target: Path,
    *,
    sha256: str | None = None,
    validate: Sequence[tuple[str, object]] = (),
    progress: bool = True,
    timeout: float = NETWORK_TIMEOUT_S,
) -> Path:
    """Download ``url`` to ``target`` via ``target.part`` (resumed on re-runs) and an atomic rename.

    Resumes from an existing ``.part`` with an HTTP Range request, retries a few times when a
    transfer drops after making progress, and checks ``sha256`` before the rename: a mismatching file
    is deleted, never left in place. ``validate`` holds ``(what, predicate(path) -> bool)`` checks.
    Raises :class:`CheckpointError` with a user-facing message on failure.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    part = target.with_name(target.name + ".part")
    attempts = 0
    while True:
        try:
            _fetch_once(url, part, target.name, progress, timeout)
            break
        except _Interrupted as exc:
            attempts += 1
            if attempts > RESUME_ATTEMPTS:
                raise CheckpointError(
                    f"{target.name}: transfer kept failing ({exc}); run the command again to resume"
                ) from exc
            log.warning("%s: %s; resuming (attempt %d of %d)", target.name, exc, attempts, RESUME_ATTEMPTS)
            time.sleep(RESUME_BACKOFF_S * attempts)
        except (OSError, http.client.HTTPException, ValueError) as exc:
            raise CheckpointError(f"{target.name}: {_describe_url_error(url, exc)}") from exc
    if sha256:
        actual = file_sha256(part, progress)
        if actual != sha256.lower():
            part.unlink(missing_ok=True)
            raise CheckpointError(
                f"{target.name}: downloaded file failed its SHA256 check (expected {sha256}, got {actual}); "
                "the bad file was deleted"
            )
    for what, ok in validate:
        if not ok(part):  # type: ignore[operator]
            part.unlink(missing_ok=True)
            raise CheckpointError(
                f"{target.name}: downloaded file is not {what} (from {url}); it was deleted"
            )
    os.replace(part, target)
    return target


# ---------------------------------------------------------------------------------------------
# Hub repos
# ---------------------------------------------------------------------------------------------
@contextlib.contextmanager
def _hub_online() -> Iterator[None]:
    """Let huggingface_hub make requests even if ``HF_HUB_OFFLINE`` was set when it was imported.

    We decide offline-ness from the environment at call time; its module constant is frozen at
    import and would otherwise refuse every request.
    """
    from huggingface_hub import constants

    old = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = False
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = old


def _resolve_url(endpoint: str, repo_id: str, revision: str, name: str) -> str:
    return f"{endpoint}/{repo_id}/resolve/{quote(revision, safe='')}/{quote(name)}"


def _describe_hub_error(endpoint: str, repo_id: str, revision: str, exc: BaseException) -> str:
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError

    if isinstance(exc, GatedRepoError):
        return f"{repo_id} is gated: accept its terms on the Hub and log in (`huggingface-cli login`)"
    if isinstance(exc, RepositoryNotFoundError):
        return f"repository {repo_id} not found at {endpoint} (or it is private: log in first)"
    if isinstance(exc, RevisionNotFoundError):
        return f"revision {revision!r} of {repo_id} not found at {endpoint}"
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    errno = re.search(r"\[Errno -?\d+\] [^'\")]+", text)  # requests buries the cause in a long repr
    if errno:
        text = errno.group(0).strip()
    elif len(text) > 200:
        text = text[:200] + "..."
    return f"cannot reach {endpoint} ({text})"


def _fetch_repo(
    part: str,
    repo_id: str,
    folder: Path,
    *,
    revision: str,
    patterns: Sequence[str],
    required: Sequence[str],
    endpoint: str,
    offline: bool,
    cache_dir: Path | None,
    result: DownloadResult,
    local_missing: Iterable[str] | None = None,
    hint_files: Sequence[str] = (),
) -> None:
    """Bring ``repo_id`` (files matching ``patterns``) into ``folder``; record what is still missing.

    Online, the expected files are the repo's own listing; offline or when the Hub cannot be
    reached, they are ``required`` plus ``local_missing`` (names from a static layout check).
    ``hint_files`` narrows the ``huggingface-cli`` command suggested for a manual download.
    """
    from huggingface_hub import HfApi, snapshot_download
    from huggingface_hub.utils import filter_repo_objects

    hint = " ".join(
        [
            *([f"HF_ENDPOINT={endpoint}"] if endpoint != DEFAULT_ENDPOINT else []),
            f"huggingface-cli download {repo_id}",
            *([f"--revision {revision}"] if revision != "main" else []),
            *hint_files,
            f"--local-dir {folder}",
        ]
    )

    def add(name: str, path: Path, source: str, reason: str) -> None:
        result.missing.append(MissingFile(part, name, path, source, reason, hint))

    def static_missing(reason: str) -> None:
        names = list(local_missing) if local_missing is not None else []
        names += [n for n in required if not (folder / n).is_file() and n not in names]
        for name in names:
            file_name = name.split(" ", 1)[0]
            add(name, folder / file_name, _resolve_url(endpoint, repo_id, revision, file_name), reason)
        if not names:
            result.present.append(folder)
            log.info("%s: %s looks complete (not checked against the Hub: %s)", part, folder, reason)

    if offline:
        static_missing("offline mode (HF_HUB_OFFLINE)")
        return
    log.info("%s: %s@%s -> %s", part, repo_id, revision, folder)
    try:
        with _hub_online():
            info = HfApi(endpoint=endpoint).model_info(repo_id, revision=revision, timeout=NETWORK_TIMEOUT_S)
    except (OSError, ValueError) as exc:
        log.debug("repo info for %s failed", repo_id, exc_info=True)
        static_missing(_describe_hub_error(endpoint, repo_id, revision, exc))
        return
    listing = [s.rfilename for s in (info.siblings or [])]
    wanted = sorted(filter_repo_objects(listing, allow_patterns=list(patterns)))
    for name in required:
        if name not in listing:
            add(name, folder / name, f"{endpoint}/{repo_id}", f"{repo_id}@{revision} has no {name}")
    if not wanted:
        return
    commit = info.sha or revision
    before = {name for name in wanted if (folder / name).is_file()}
    reason = ""
    try:
        with _hub_online():
            snapshot_download(
                repo_id,
                revision=commit,
                local_dir=str(folder),
                allow_patterns=wanted,
                endpoint=endpoint,
                cache_dir=str(cache_dir) if cache_dir is not None else None,
                etag_timeout=NETWORK_TIMEOUT_S,
            )
    except (OSError, ValueError) as exc:
        log.debug("snapshot_download of %s failed", repo_id, exc_info=True)
        reason = _describe_hub_error(endpoint, repo_id, revision, exc)
    for name in wanted:
        path = folder / name
        if path.is_file():
            (result.present if name in before else result.fetched).append(path)
        else:
            why = reason or "not downloaded (unknown reason; run again)"
            add(name, path, _resolve_url(endpoint, repo_id, commit, name), why)


def _fetch_plain(
    part: str,
    name: str,
    url: str,
    target: Path,
    *,
    offline: bool,
    progress: bool,
    result: DownloadResult,
    sha256: str | None = None,
    validate: Sequence[tuple[str, object]] = (),
) -> None:
    """Fetch one plain-URL file unless a good copy is already at ``target``."""
    if target.is_file():
        good = all(ok(target) for _, ok in validate)  # type: ignore[operator]
        if good and sha256 is not None:
            log.info("%s: checking the SHA256 of %s", part, target)
            good = file_sha256(target, progress) == sha256
        if good:
            result.present.append(target)
            return
        # An unusable file would only fail later, at load time: remove it and fetch it again.
        log.warning("%s: %s failed its checksum/format check; deleting it", part, target)
        target.unlink()
    if offline:
        result.missing.append(MissingFile(part, name, target, url, "offline mode (HF_HUB_OFFLINE)"))
        return
    log.info("%s: %s -> %s", part, url, target)
    try:
        fetch_url(url, target, sha256=sha256, validate=validate, progress=progress)
    except CheckpointError as exc:
        result.missing.append(MissingFile(part, name, target, url, str(exc).removeprefix(f"{target.name}: ")))
        return
    result.fetched.append(target)


# ---------------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------------
def download(
    dest: Path | str | None = None,
    *,
    model: str = DEFAULT_MODEL,
    parts: Iterable[str] | None = None,
    revision: str = "main",
    decoder_revision: str = "main",
    allow_any_repo: bool = False,
    endpoint: str | None = None,
    whisper: str | None = None,
    voices: str | None = None,
    offline: bool | None = None,
    cache_dir: Path | str | None = None,
    progress: bool = True,
) -> DownloadResult:
    """Fetch the chosen ``parts`` (default: all) into ``dest``; raise if anything is still missing.

    ``endpoint``/``whisper``/``voices`` override the Hub base URL, the Whisper file URL and the
    voices base URL (else ``HF_ENDPOINT``/``OMNI2_WHISPER_URL``/``OMNI2_VOICES_URL``, else the
    official ones). ``offline`` (default: ``HF_HUB_OFFLINE`` now) only checks what is in place.
    ``cache_dir`` is huggingface_hub's cache (default: its own). Returns a :class:`DownloadResult`;
    raises :class:`CheckpointError` naming every missing file and its target path.
    """
    dest = Path(dest if dest is not None else DEFAULT_DEST).expanduser().resolve()
    chosen = list(dict.fromkeys(parts or PARTS))
    unknown = [p for p in chosen if p not in PARTS]
    if unknown:
        raise CheckpointError(f"Unknown download part(s) {unknown}; choose from {list(PARTS)}.")
    repo_id = resolve_model_repo(model, allow_any_repo) if "model" in chosen else None
    offline = offline_from_env() if offline is None else offline
    hub = hub_endpoint(endpoint)
    cache = Path(cache_dir) if cache_dir is not None else None
    result = DownloadResult(dest=dest)
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CheckpointError(f"Cannot create the destination folder {dest}: {exc}") from exc

    if repo_id is not None:
        folder = dest / model_dir_name(repo_id)
        _fetch_repo(
            "model",
            repo_id,
            folder,
            revision=revision,
            patterns=MODEL_PATTERNS,
            required=("config.json",),
            endpoint=hub,
            offline=offline,
            cache_dir=cache,
            result=result,
            local_missing=missing_model_files(folder),
        )
        still = missing_model_files(folder)
        if still and not any(m.part == "model" for m in result.missing):
            result.notes.append(
                f"model: {repo_id} does not look like an official LLaMA-Omni2 repo; lacks {still}"
            )
    if "decoder" in chosen:
        _fetch_repo(
            "decoder",
            DECODER_REPO,
            dest / DECODER_DIR,
            revision=decoder_revision,
            patterns=DECODER_FILES,
            required=DECODER_FILES,
            endpoint=hub,
            offline=offline,
            cache_dir=cache,
            result=result,
            hint_files=DECODER_FILES,
        )
    if "whisper" in chosen:
        url = whisper_url(whisper)
        sha = sha256_from_url(url)
        if sha is None:
            result.notes.append(f"whisper: {url} carries no SHA256 in its path; the file is not verified")
        _fetch_plain(
            "whisper",
            WHISPER_FILE,
            url,
            dest / WHISPER_DIR / WHISPER_FILE,
            offline=offline,
            progress=progress,
            result=result,
            sha256=sha,
        )
    if "voices" in chosen:
        base = voices_url(voices)
        for name in VOICE_FILES:
            _fetch_plain(
                "voices",
                name,
                base + name,
                dest / VOICES_DIR / name,
                offline=offline,
                progress=progress,
                result=result,
                validate=(("a WAV file", is_wav),),
            )

    for note in result.notes:
        log.warning("%s", note)
    if result.missing:
        raise CheckpointError(format_missing(result.missing, dest))
    return result


def format_missing(missing: Sequence[MissingFile], dest: Path) -> str:
    """One readable message: each missing file with its full target path and source, grouped by cause."""
    lines = [
        f"{len(missing)} checkpoint file(s) are missing under {dest}. "
        "Download each one and put it at the path shown (or fix the cause and run "
        "`python launch.py download` again; it resumes):"
    ]
    groups: dict[tuple[str, str], list[MissingFile]] = {}
    for m in missing:
        groups.setdefault((m.part, m.reason), []).append(m)
    for (part, reason), items in groups.items():
        lines.append(f"  [{part}] {reason}")
        if items[0].hint:
            lines.append(f"    (all at once, where the Hub is reachable: {items[0].hint})")
        for m in items:
            lines.append(f"    {m.name}")
            lines.append(f"      put at: {m.target}")
            lines.append(f"      from:   {m.source}")
    return "\n".join(lines)
