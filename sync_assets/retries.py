"""Retries: only for errors a later attempt can cure, with exponential backoff and jitter.

A dropped connection, a timeout or a node rebooting passes; a changed host key, a
checksum mismatch, a full disk, an invalid inventory or an exporter failing on its
input fails the same way on every attempt, and retrying it only hides the fault for
minutes (and makes `fleetsync sync` slow). `is_transient` decides, from the error alone;
`retry_transient_only` applies it to a step's compute function, so that the step's
`RetryPolicy` sees every permanent error as `dg.Failure(allow_retries=False)`.
"""

from __future__ import annotations

import errno
import functools
import inspect
import re
import sqlite3
from collections.abc import Callable
from typing import Any

import dagster as dg
import sqlalchemy as sa

from resources.transport.base import ChecksumMismatch, NodeUnreachable, TransferError
from resources.transport.ssh import HostKeyRefused
from sync_assets.fleet.inventory import InventoryError


def network_retry(delay_s: float = 5) -> dg.RetryPolicy:
    """3 retries after delay_s, 2 delay_s, 4 delay_s (± jitter)."""
    return dg.RetryPolicy(
        max_retries=3, delay=delay_s, backoff=dg.Backoff.EXPONENTIAL, jitter=dg.Jitter.PLUS_MINUS
    )


NETWORK_RETRY = network_retry()

# Never cured by waiting, whatever their message says.
PERMANENT_TYPES: tuple[type[BaseException], ...] = (
    HostKeyRefused,
    ChecksumMismatch,
    InventoryError,
)
# Errors of talking to nodes, disks and databases: the only ones a retry may cure. Any
# other exception (ValueError, KeyError, ...) is bad input or a bug: permanent.
IO_TYPES: tuple[type[BaseException], ...] = (
    TransferError,
    OSError,
    EOFError,
    sqlite3.OperationalError,
    sa.exc.OperationalError,
)
# The network or the peer failed for now: a node rebooting, a link flapping.
TRANSIENT_TYPES: tuple[type[BaseException], ...] = (
    NodeUnreachable,
    ConnectionError,
    TimeoutError,
    EOFError,
)
TRANSIENT_ERRNOS = frozenset(
    {
        errno.ECONNRESET,
        errno.ECONNREFUSED,
        errno.ECONNABORTED,
        errno.ETIMEDOUT,
        errno.EHOSTUNREACH,
        errno.ENETUNREACH,
        errno.ENETDOWN,
        errno.EHOSTDOWN,
        errno.EPIPE,
        errno.EAGAIN,
    }
)
# Said by an I/O error's message (lower case): a remote program's stderr, ssh's words.
# A permanent phrase wins: "connection reset" next to "no space left" is still a full disk.
PERMANENT_PHRASES = (
    "host key",
    "authentication failed",
    "permission denied",
    "no space left on device",
    "disk quota exceeded",
)
TRANSIENT_PHRASES = (
    "connection reset",
    "connection refused",
    "connection aborted",
    "connection closed",
    "connection lost",
    "timed out",
    "network is unreachable",
    "no route to host",
    "broken pipe",
    "temporarily unavailable",
    "temporary failure in name resolution",
    "database is locked",
)


def is_transient(exc: BaseException) -> bool:
    """Whether a later attempt may succeed where `exc` failed (the network, not the data)."""
    if isinstance(exc, PERMANENT_TYPES) or not isinstance(exc, IO_TYPES):
        return False
    message = str(exc).lower()
    if any(phrase in message for phrase in PERMANENT_PHRASES):
        return False
    if isinstance(exc, TRANSIENT_TYPES):
        return True
    if isinstance(exc, OSError) and exc.errno is not None:
        return exc.errno in TRANSIENT_ERRNOS
    return any(phrase in message for phrase in TRANSIENT_PHRASES)


# What a classified step failure carries in its metadata (read by `transfer_failures`).
ERROR_CLASS = "error_class"
TRANSIENT = "transient"
FAILED_NODE = "node"
# Every transport error starts `node NAME:` (the local transport quotes the name).
_NODE_PREFIX = re.compile(r"^node '?([A-Za-z0-9_.-]+)'?:")


def failed_node(exc: BaseException) -> str:
    """The node the error itself names ('' when none): the one that failed, which is not
    always the node a run is partitioned by."""
    named = getattr(exc, "node", None)
    if isinstance(named, str):
        return named
    found = _NODE_PREFIX.match(str(exc))
    return found.group(1) if found else ""


def classified_failure(exc: Exception, raised: dg.Failure | None = None) -> dg.Failure:
    """`exc` as a step failure, retried by the step's policy only when transient; its
    class, node and transience in the metadata, for `transfer_failures` and the UI.
    `raised`: the `dg.Failure` an asset raised from `exc`, whose description and
    metadata are kept, and whose `allow_retries=False` is never overridden."""
    transient = is_transient(exc) and (raised is None or raised.allow_retries)
    return dg.Failure(
        description=(raised.description if raised else None) or str(exc) or type(exc).__name__,
        metadata={
            **(raised.metadata if raised else {}),
            ERROR_CLASS: type(exc).__name__,
            TRANSIENT: transient,
            FAILED_NODE: failed_node(exc),
        },
        allow_retries=transient,
    )


def retry_transient_only(compute: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap a step's compute function so that its errors reach the retry policy
    classified, and a `dg.Failure` raised from an error (an exporter's failure, told in
    the asset's words) by the error it was raised from. A `dg.Failure` of its own (a
    batch of failed transfers) and Dagster's own errors pass unchanged. Dagster reads
    the parameters through `functools.wraps`."""
    if inspect.isgeneratorfunction(compute):  # its errors would escape the wrapper
        raise TypeError(f"{compute.__name__}: a generator step cannot be classified")

    @functools.wraps(compute)
    def classified(*args: Any, **kwargs: Any) -> Any:
        try:
            return compute(*args, **kwargs)
        except dg.Failure as failure:
            cause = failure.__cause__
            if not isinstance(cause, Exception) or isinstance(cause, dg.Failure):
                raise
            raise classified_failure(cause, failure) from cause
        except (dg.DagsterError, dg.RetryRequested):
            raise
        except Exception as exc:
            raise classified_failure(exc) from exc

    return classified
