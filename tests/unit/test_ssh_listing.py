"""How SshTransport reads a node's `find` output: pure parsing, no sshd needed.

A node's names are data from the outside world; these tests hand the parser what a
hostile or broken node could print and check what it decides."""

from __future__ import annotations

import pytest

from resources.transport.base import RemoteFile, TransferError
from resources.transport.ssh import _END, _ended, _mtime_ns, parse_find_listing
from sync_assets.fleet.inventory import Node

NODE = Node(name="n", transport="local", roles=["storage"], data_root="/d")


def entry(kinds: str, size: int, mtime: str, path: str) -> str:
    """One record as `find -printf FIND_FORMAT` prints it."""
    return f"{kinds}\0{size}\0{mtime}\0{path}\0"


def test_listing_output_must_end_with_its_marker() -> None:
    """A listing cut short (a dropped session, a killed `find`) is an error, never a
    node that seems to hold fewer files."""
    body = entry("ff", 3, "1.5000000000", "a.db")
    assert _ended(NODE, f"{body}{_END}\n", "list") == body
    for cut in (body, body[:-4], "", _END, f"{_END[:-1]}\n"):
        with pytest.raises(TransferError, match="ended early"):
            _ended(NODE, cut, "list")


@pytest.mark.parametrize(
    ("printed", "ns"),
    [
        ("1732387200.1234567890", 1732387200_123456789),
        ("1732387200.5", 1732387200_500000000),
        ("1732387200", 1732387200_000000000),
        ("-1.5000000000", -1_500000000),
    ],
)
def test_find_mtimes_parse_to_exact_nanoseconds(printed: str, ns: int) -> None:
    assert _mtime_ns(printed) == ns


def test_unreadable_mtime_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="unreadable mtime"):
        _mtime_ns("$(reboot)")


def test_parse_decides_what_each_name_is() -> None:
    t = "1732387200.0000000000"
    body = "".join(
        [
            entry("ff", 10, "1732387200.1234567890", "a.db"),
            entry("dd", 4096, t, "sub"),
            entry("ff", 11, t, "sub/b.npz"),
            entry("ff", 12, t, "with space $(touch x).db"),  # odd but safe: kept as data
            entry("ff", 1, t, "new\nline.db"),  # control character: rejected
            entry("dd", 4096, t, "bad\tdir"),
            entry("ff", 2, t, "bad\tdir/inside.db"),  # below a rejected dir: skipped
            entry("ff", 3, t, ".fleetsync-tmp-a.db.0123"),  # our own staging: ignored
            entry("ff", 3, t, "live.db-wal"),  # ignored
            entry("dd", 4096, t, ".rsync-partial"),
            entry("ff", 3, t, ".rsync-partial/a.db"),  # ignored
            entry("lfsub/b.npz", 7, t, "link.npz"),  # relative, below: accepted
            entry("lf../../etc/passwd", 16, t, "up.db"),  # escapes: rejected
            entry("lf/etc/passwd", 11, t, "abs.db"),  # absolute: rejected
            entry("lNgone.db", 7, t, "dangling.db"),  # no target: rejected
            entry("pp", 0, t, "fifo.db"),  # not a file: rejected
            "-\0",  # end of records; then each accepted-looking link's target
            "11\x001732387200.0000000000\x00./link.npz\x00",
        ]
    )
    files, rejected = parse_find_listing(body, "games")
    assert files == [
        RemoteFile("games/a.db", 10, 1732387200_123456789),
        RemoteFile("games/sub/b.npz", 11, 1732387200_000000000),
        RemoteFile("games/with space $(touch x).db", 12, 1732387200_000000000),
        RemoteFile("games/link.npz", 11, 1732387200_000000000),  # the target's size
    ]
    assert rejected == [
        "games/new\nline.db",
        "games/bad\tdir",
        "games/up.db",
        "games/abs.db",
        "games/dangling.db",
        "games/fifo.db",
    ]


@pytest.mark.parametrize(
    "body",
    [
        "ff\x0010\x001.5\x00-\x00",  # a record cut short
        "ff\x0010\x001.5000000000\x00a.db\x00",  # no end-of-records field
        "ff\x00ten\x001.5000000000\x00a.db\x00-\x00",  # size not a number
        "ff\x0010\x00yesterday\x00a.db\x00-\x00",  # mtime not a number
        "lfa.db\x003\x001.5000000000\x00l.db\x00-\x00./l.db\x00",  # target cut short
        "lfa.db\x003\x001.5000000000\x00l.db\x00-\x007\x001.5\x00/abs\x00",  # not ./
    ],
)
def test_malformed_listing_is_an_error_not_fewer_files(body: str) -> None:
    with pytest.raises(ValueError):
        parse_find_listing(body, "")


def test_a_link_is_listed_with_its_targets_size_or_not_at_all() -> None:
    """A path named `-` is a record, not the end of them; a link whose target went
    away between the walk and the stat is no file."""
    t = "1.0000000000"
    body = "".join(
        [
            entry("ff", 1, t, "-"),
            entry("lfsub/x.db", 5, t, "kept.db"),
            entry("lfgone.db", 5, t, "vanished.db"),
            "-\0",
            "7\x002.5000000000\x00./kept.db\x00",
        ]
    )
    files, rejected = parse_find_listing(body, "")
    assert files == [RemoteFile("-", 1, 1_000000000), RemoteFile("kept.db", 7, 2_500000000)]
    assert rejected == []
    assert parse_find_listing("-\0", "") == ([], [])  # an empty or missing directory
