"""Path rules shared by every transport: pure functions, no I/O.

A node's file names come from the outside world (generators, operators, other
tools), so they are data, never code: anything that could escape the data root,
confuse a shell, a log line or an rsync file list is refused before any
transport acts on it (LESSONS 5, 7).
"""

from __future__ import annotations

import posixpath
import re
import unicodedata
import uuid

STAGING_PREFIX = ".fleetsync-tmp-"
"""fleetsync's own in-flight names; never listed, safe to sweep when stale."""

# Extensions of real artifacts; an upload leftover is one of these plus `.XXXXXX`.
KNOWN_EXTENSIONS: frozenset[str] = frozenset(
    {"db", "sqlite", "sqlite3", "npz", "pth", "pt", "json", "jsonl", "sha256"}
)
# Genuine second suffixes that look like random ones (`model.pth.sha256`).
_REAL_SUFFIXES: frozenset[str] = KNOWN_EXTENSIONS | {"backup"}

_IGNORED_DIR = ".rsync-partial"  # rsync's --partial-dir: never an artifact
_IGNORED_SUFFIXES: tuple[str, ...] = (".tmp", ".partial", ".lock", "-wal", "-shm", "-journal")
_UPLOAD_LEFTOVER = re.compile(
    r"\.(?:" + "|".join(sorted(KNOWN_EXTENSIONS)) + r")\.([A-Za-z0-9]{6,8})$"
)
# Paths `safe_relpath` returns unchanged, recognised by one regex instead of a scan of
# every character: ASCII name characters, no empty, `.` or `..` component. A node's
# listing is almost all such names; the rest take the full checks.
_PLAIN_COMPONENT = r"(?!\.\.?(?:/|$))[\w.+,=@%-]+"
_PLAIN_PATH = re.compile(rf"{_PLAIN_COMPONENT}(?:/{_PLAIN_COMPONENT})*", re.ASCII)
# NAME_MAX is 255 bytes; keep room for the prefix and the random suffix.
_MAX_STAGED_STEM_BYTES = 200


class UnsafePathError(ValueError):
    """A path refused before any I/O: it could escape the data root or be misread."""


def safe_relpath(path: str) -> str:
    """Validate and normalise a data-root-relative POSIX path (`./a//b` → `a/b`).

    Raises UnsafePathError for empty or absolute paths, `..` components,
    backslashes, NUL and other control characters (incl. newline, DEL), and
    names that are not valid UTF-8 (they cannot be stored or quoted reliably).
    """
    if _PLAIN_PATH.fullmatch(path):
        return path
    return _checked_relpath(path)


def is_plain_relpath(path: str) -> bool:
    """True when `safe_relpath` returns `path` unchanged without its full checks: the
    cheap test a listing of 10,000s of names makes first."""
    return _PLAIN_PATH.fullmatch(path) is not None


def _checked_relpath(path: str) -> str:
    """`safe_relpath`'s full checks, for any path (the plain ones pass unchanged)."""
    if not path:
        raise UnsafePathError("empty path")
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        raise UnsafePathError(f"{path!r}: not valid UTF-8") from None
    if any(unicodedata.category(ch) == "Cc" for ch in path):
        raise UnsafePathError(f"{path!r}: control character")
    if "\\" in path:
        raise UnsafePathError(f"{path!r}: backslash")
    if path.startswith("/"):
        raise UnsafePathError(f"{path!r}: absolute path")
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise UnsafePathError(f"{path!r}: '..' component")
    if not parts:
        raise UnsafePathError(f"{path!r}: names no file")
    return "/".join(parts)


def is_ignored(relpath: str) -> bool:
    """True for temp/partial files that are never artifacts (and never shipped alone).

    `relpath` may be a bare name or a relative path; anything under an ignored
    directory (`.rsync-partial/`) is ignored too. (Called for every listed file: the
    cheap tests come first.)
    """
    name = relpath.rstrip("/").rpartition("/")[2]
    if not name:
        return False
    if name.endswith(_IGNORED_SUFFIXES) or name.startswith(STAGING_PREFIX):
        return True
    if _IGNORED_DIR in relpath and _IGNORED_DIR in relpath.split("/"):
        return True
    if name.count(".") < 2:  # an upload leftover is `NAME.EXT.XXXXXX`
        return False
    leftover = _UPLOAD_LEFTOVER.search(name)
    return leftover is not None and leftover.group(1).lower() not in _REAL_SUFFIXES


def staging_name(final_relpath: str, token: str | None = None) -> str:
    """A temp path in the same directory as `final_relpath`, so rename is atomic.

    Unique by default; a caller passing `token` (e.g. the content hash) gets the same
    name on every attempt, so an interrupted transfer resumes from its partial file."""
    rel = safe_relpath(final_relpath)
    parent, name = posixpath.split(rel)
    stem = name.encode("utf-8")[:_MAX_STAGED_STEM_BYTES].decode("utf-8", "ignore")
    staged = f"{STAGING_PREFIX}{stem}.{token or uuid.uuid4().hex[:12]}"
    return posixpath.join(parent, staged) if parent else staged
