"""`is_transient` against an oracle table: error kinds × real messages × errnos."""

from __future__ import annotations

import errno
import sqlite3
from collections.abc import Callable

import dagster as dg
import pytest
import sqlalchemy as sa
from hypothesis import given, settings
from hypothesis import strategies as st

from resources.transport.base import ChecksumMismatch, NodeUnreachable, TransferError
from resources.transport.programs import RemoteProgramFailed
from resources.transport.ssh import HostKeyRefused
from sync_assets.fleet.inventory import InventoryError
from sync_assets.retries import classified_failure, failed_node, is_transient

# Real messages, by what they say: from ssh/paramiko, the OS, sqlite, shipped programs.
PERMANENT_SAYINGS = [
    "Host key for server 'gpu-1' does not match",
    "Authentication failed.",
    "Permission denied (publickey)",
    "[Errno 28] No space left on device",
    "OSError: [Errno 122] Disk quota exceeded",
]
TRANSIENT_SAYINGS = [
    "[Errno 104] Connection reset by peer",
    "[Errno 111] Connection refused",
    "command timed out after 600 s",
    "[Errno 101] Network is unreachable",
    "[Errno 113] No route to host",
    "[Errno 32] Broken pipe",
    "Resource temporarily unavailable",
    "Temporary failure in name resolution",
    "sqlite3.OperationalError: database is locked",
    "Connection closed by remote host",
]
NEUTRAL_SAYINGS = [
    "exporter command failed (exit 3)",
    "ValueError: arrays of unequal length",
    "data root is not a directory",
    "no complete square19_4p game",
    "",
]

# Error kinds, by how the oracle decides them.
ALWAYS_PERMANENT: list[Callable[[str], BaseException]] = [
    lambda m: HostKeyRefused("gpu-1", m),
    ChecksumMismatch,
    lambda m: InventoryError([m]),
    ValueError,  # bad input or a bug: not an I/O error, whatever it says
    KeyError,
    RuntimeError,
    lambda m: dg.DagsterInvariantViolationError(m),
]
ALWAYS_TRANSIENT_UNLESS_PERMANENT_SAYING: list[Callable[[str], BaseException]] = [
    lambda m: NodeUnreachable("gpu-1", m),
    ConnectionResetError,
    TimeoutError,
    EOFError,
]
BY_SAYING: list[Callable[[str], BaseException]] = [
    TransferError,
    lambda m: RemoteProgramFailed("gpu-1", "exporter", 1, None, m),
    OSError,  # no errno
    sqlite3.OperationalError,
    lambda m: sa.exc.OperationalError("SELECT 1", {}, Exception(m)),
]
TRANSIENT_ERRNOS = [errno.ECONNRESET, errno.ETIMEDOUT, errno.EHOSTUNREACH, errno.EPIPE]
PERMANENT_ERRNOS = [errno.ENOSPC, errno.ENOENT, errno.EACCES, errno.ENOTDIR, errno.EROFS]

# Filler that can spell none of the sayings.
noise = st.text(alphabet="0123456789 :/_-.[]", max_size=12)


@st.composite
def messages(draw: st.DrawFn) -> tuple[str, set[str]]:
    """A message of up to two sayings in noise, and which kinds of saying it holds."""
    picks = draw(
        st.lists(
            st.sampled_from(
                [("permanent", s) for s in PERMANENT_SAYINGS]
                + [("transient", s) for s in TRANSIENT_SAYINGS]
                + [("neutral", s) for s in NEUTRAL_SAYINGS]
            ),
            max_size=2,
        )
    )
    text = draw(noise) + "".join(s + draw(noise) for _, s in picks)
    return text, {kind for kind, _ in picks}


@settings(max_examples=500, deadline=None)  # pure and fast; no flaky deadline on a busy box
@given(
    kind=st.sampled_from(["permanent", "transient", "by_saying", "errno"]),
    index=st.integers(0, 20),
    message=messages(),
    transient_errno=st.booleans(),
)
def test_is_transient_matches_the_oracle(
    kind: str, index: int, message: tuple[str, set[str]], transient_errno: bool
) -> None:
    text, says = message
    if kind == "errno":
        codes = TRANSIENT_ERRNOS if transient_errno else PERMANENT_ERRNOS
        exc: BaseException = OSError(codes[index % len(codes)], text)
        want = transient_errno and "permanent" not in says
    else:
        table = {
            "permanent": ALWAYS_PERMANENT,
            "transient": ALWAYS_TRANSIENT_UNLESS_PERMANENT_SAYING,
            "by_saying": BY_SAYING,
        }[kind]
        exc = table[index % len(table)](text)
        want = {
            "permanent": False,
            "transient": "permanent" not in says,
            "by_saying": "transient" in says and "permanent" not in says,
        }[kind]
    assert is_transient(exc) is want, (type(exc).__name__, str(exc))


@pytest.mark.parametrize(
    ("exc", "transient"),
    [
        # A changed host key: the transport's own message, with "connection" words in it.
        (HostKeyRefused("gpu-1", "node gpu-1: host key of 10.0.0.5:22 does not match"), False),
        (NodeUnreachable("gpu-1", "node gpu-1: cannot connect to 10.0.0.5:22: timed out"), True),
        (NodeUnreachable("gpu-1", "node gpu-1: ssh: Authentication failed."), False),
        # An exporter failing on its input vs. losing its network share mid-read.
        (RemoteProgramFailed("gpu-1", "exporter", 1, None, "KeyError: 'moves'"), False),
        (RemoteProgramFailed("gpu-1", "exporter", 1, None, "Connection reset by peer"), True),
        (RemoteProgramFailed("gpu-1", "exporter", 1, None, "No space left on device"), False),
        (ChecksumMismatch("node x: 'a.db': sha256 differs"), False),
        (InventoryError(["nodes[0].connect_timeout: must be > 0 (timed out)"]), False),
        (OSError(errno.ENOSPC, "No space left on device"), False),
        (ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused"), True),
    ],
)
def test_is_transient_on_the_errors_fleetsync_raises(exc: BaseException, transient: bool) -> None:
    assert is_transient(exc) is transient


@pytest.mark.parametrize(
    ("exc", "node"),
    [
        (HostKeyRefused("gpu-1", "host key refused"), "gpu-1"),
        (RemoteProgramFailed("train-1", "exporter", 1, None, "boom"), "train-1"),
        (TransferError("node 'gpu-2': 'games/a.db': list: data root is not a directory"), "gpu-2"),
        (TransferError("node store-1: command timed out after 600 s"), "store-1"),
        (TransferError("copy failed: nodes gpu-1 and store-1"), ""),
        (ValueError("bad"), ""),
    ],
)
def test_failed_node_is_the_one_the_error_names(exc: BaseException, node: str) -> None:
    assert failed_node(exc) == node


def test_classified_failure_carries_what_transfer_failures_reads() -> None:
    permanent = classified_failure(HostKeyRefused("gpu-1", "node gpu-1: host key differs"))
    assert not permanent.allow_retries
    assert permanent.description == "node gpu-1: host key differs"
    assert {k: v.value for k, v in permanent.metadata.items()} == {
        "error_class": "HostKeyRefused",
        "transient": False,
        "node": "gpu-1",
    }
    transient = classified_failure(ConnectionResetError("Connection reset by peer"))
    assert transient.allow_retries
    assert {k: v.value for k, v in transient.metadata.items()} == {
        "error_class": "ConnectionResetError",
        "transient": True,
        "node": "",
    }


def test_a_failure_raised_from_an_error_is_classified_by_that_error() -> None:
    exporter = RemoteProgramFailed("train-1", "exporter", 1, None, "Connection reset by peer")
    told = dg.Failure("config hex8_2p: export failed", metadata={"config": "hex8_2p"})
    failure = classified_failure(exporter, told)
    assert failure.allow_retries and failure.description == "config hex8_2p: export failed"
    assert {k: v.value for k, v in failure.metadata.items()} == {
        "config": "hex8_2p",
        "error_class": "RemoteProgramFailed",
        "transient": True,
        "node": "train-1",
    }
    # An author's allow_retries=False stands, whatever the error.
    final = dg.Failure("unreadable", allow_retries=False)
    assert not classified_failure(exporter, final).allow_retries
