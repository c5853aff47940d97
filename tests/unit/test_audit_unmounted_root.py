"""A data root whose disk is not mounted (an empty mount point: a reboot before the
mount, an NFS or fsck hiccup) looks exactly like a node whose files were all deleted.
The audit, the scrub and the engine's look at the disk (`confirm_replicas`) must drop
nothing there, the last copy of an artifact included, and say why; a directory emptied
on a data root that still holds other files is a real loss, dropped as before."""

from __future__ import annotations

import os
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from resources.catalog import Catalog
from resources.transport import Transports
from sync_assets.engine.audit import (
    AuditedReplica,
    DataRootEmpty,
    audit_nodes,
    confirm_replicas,
    replicas_to_drop,
)
from sync_assets.engine.scrub import scrub_node
from sync_assets.fleet.checks import replaced_in_place
from sync_assets.fleet.inventory import Node
from tests.cluster.test_audit import put

REL = "games/collected/gpu-9/selfplay.{}.db"


def _fleet(tmp_path: Path, n: int = 3) -> tuple[Node, Catalog, list[str]]:
    """store-1 holds the only copy of `n` snapshots; then its disk goes unmounted."""
    mount = tmp_path / "store-1"
    node = Node(name="store-1", transport="local", roles=["storage"], data_root=str(mount))
    catalog = Catalog(url=f"sqlite:///{tmp_path / 'catalog.db'}")
    shas = [put(node, catalog, REL.format(i), os.urandom(2048)) for i in range(n)]  # only copies
    os.rename(mount, tmp_path / "disk-offline")  # the mount point is there, empty
    mount.mkdir()
    return node, catalog, shas


def _copies(catalog: Catalog, shas: list[str]) -> int:
    return len(catalog.replicas_of(shas))


def test_audit_of_unmounted_root_keeps_last_copies(tmp_path: Path) -> None:
    node, catalog, shas = _fleet(tmp_path)
    outcome = audit_nodes([node], catalog, Transports().for_node)
    assert _copies(catalog, shas) == 3, f"audit dropped the only copies: {outcome}"
    error = outcome["store-1"]
    assert isinstance(error, DataRootEmpty)
    assert "store-1" in str(error) and "nothing dropped" in str(error)


def test_audit_of_unmounted_root_with_one_replica_keeps_it(tmp_path: Path) -> None:
    node, catalog, shas = _fleet(tmp_path, n=1)
    (Path(node.data_root) / ".fleetsync").mkdir()  # fleetsync's own, made on the bare mount
    outcome = audit_nodes([node], catalog, Transports().for_node)
    assert _copies(catalog, shas) == 1 and isinstance(outcome["store-1"], DataRootEmpty)


def test_scrub_of_unmounted_root_keeps_last_copies(tmp_path: Path) -> None:
    node, catalog, shas = _fleet(tmp_path)
    result = scrub_node(node, catalog, Transports(), replaced_in_place=replaced_in_place,
                        budget=2**30, hash_timeout_s=60)  # fmt: skip
    assert _copies(catalog, shas) == 3, f"scrub dropped the only copies: {result.summary()}"
    assert "nothing dropped" in result.refused and "unmounted" in result.summary()
    [finding] = catalog.check_findings_frame("store-1").itertuples()
    assert finding.finding == "unmounted" and "nothing dropped" in finding.detail


def test_confirm_replicas_on_unmounted_root_drops_nothing(tmp_path: Path) -> None:
    """The engine looks at a subset of the node's copies before trusting them."""
    node, catalog, shas = _fleet(tmp_path)
    [row] = catalog.replicas_of(shas[:1])
    recorded = [AuditedReplica(row.sha256, row.path, row.size, None)]
    try:
        confirm_replicas(node, catalog, Transports().for_node(node), recorded)
    except DataRootEmpty as exc:
        assert "store-1" in str(exc)
    else:
        raise AssertionError("confirm_replicas trusted an empty data root")
    assert _copies(catalog, shas) == 3


def test_a_directory_emptied_on_a_mounted_root_is_still_dropped(tmp_path: Path) -> None:
    """Other files on the data root: the disk is there, the copies are really gone."""
    node, catalog, shas = _fleet(tmp_path)
    (Path(node.data_root) / "models").mkdir()
    (Path(node.data_root) / "models" / "other.pth").write_bytes(b"x")
    outcome = audit_nodes([node], catalog, Transports().for_node)
    assert _copies(catalog, shas) == 0 and outcome["store-1"].dropped == 3  # type: ignore[union-attr]


@given(
    recorded=st.dictionaries(st.integers(0, 9), st.integers(1, 4), max_size=8),
    on_disk=st.dictionaries(st.integers(0, 9), st.integers(0, 4), max_size=10),
    root_populated=st.booleans(),
)
def test_replicas_to_drop_property(
    recorded: dict[int, int], on_disk: dict[int, int], root_populated: bool
) -> None:
    """The replicas whose file is gone or resized; refused, none dropped, exactly when
    there is one and the data root holds nothing but fleetsync's hidden entries."""
    rows = [AuditedReplica(f"{i:064x}", f"f{i}", size, None) for i, size in recorded.items()]
    sizes = {f"f{i}": size for i, size in on_disk.items()}
    expected = [(f"f{i}", on_disk.get(i)) for i, size in recorded.items() if on_disk.get(i) != size]
    try:
        wrong = replicas_to_drop("n1", rows, sizes, root_populated=root_populated)
    except DataRootEmpty as exc:
        assert expected and not root_populated and "n1" in str(exc)
    else:
        assert root_populated or not expected
        assert [(r.path, r.found_size) for r in wrong] == expected
