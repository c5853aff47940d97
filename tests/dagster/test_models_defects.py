"""Issue 8, item 3: a stale or forged candidate report destroyed files.

On a hash mismatch, promotion moved *whatever path was reported* into `quarantine/`
and the catalog kept the moved file as a verified replica. Here: a report naming the
promoted model (a raw event, as a POST to the webserver records it), a report made
stale by training overwriting the candidate, and a catalog row made stale the same
way. Real demo nodes (LocalTransport directories), a real SQLite catalog and a real
Dagster instance; what is on disk is hashed with hashlib and what the catalog holds
is read with plain SQL, never through the code under test."""

from __future__ import annotations

import hashlib
import os
import posixpath
import sqlite3
from pathlib import Path

import dagster as dg
import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from resources.catalog import Catalog
from resources.exporter import Exporter
from resources.inventory import FleetInventory
from resources.transport import Transports
from sync_assets.cli.report import report
from sync_assets.demo.pipeline import build_demo_fleet, write_candidate
from sync_assets.fleet.inventory import Fleet, load_inventory
from sync_assets.models.assets import models_on_node, models_promoted
from sync_assets.models.promotion import candidate_path_problem
from sync_assets.models.publish import CandidateRejected, place_promoted, register_candidate
from sync_assets.reports import Rejected, candidate_from_event

CONFIG = "hex8_2p"
CANONICAL = f"models/canonical_{CONFIG}.pth"
BEST = f"models/ringrift_best_{CONFIG}.pth"


@pytest.fixture
def fleet_env(tmp_path: Path):
    fleet_file = build_demo_fleet(tmp_path / "fleet", node_count=4, games_per_node=10)
    catalog_db = tmp_path / "catalog.db"
    resources = {
        "inventory": FleetInventory(path=str(fleet_file)),
        "catalog": Catalog(url=f"sqlite:///{catalog_db}"),
        "transports": Transports(),
        "exporter": Exporter(),
    }
    with dg.instance_for_test() as instance:
        fleet = load_inventory(fleet_file)
        instance.add_dynamic_partitions("nodes", [n.name for n in fleet.nodes])
        yield fleet, resources, instance, catalog_db


# ---- independent observers: the disk through hashlib, the catalog through SQL ----------


def sha_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def files_on_nodes(fleet: Fleet) -> dict[tuple[str, str], str]:
    """(node, relative path) → SHA-256 of every regular file on every node (links
    followed, so a dangling `ringrift_best_*` shows up as missing)."""
    found = {}
    for node in fleet.nodes:
        root = Path(node.data_root)
        for dirpath, _, names in os.walk(root):
            for name in names:
                full = Path(dirpath) / name
                if full.is_file():
                    found[(node.name, str(full.relative_to(root)))] = sha_of(full)
    return found


def model_rows(catalog_db: Path) -> set[tuple[str, str, str]]:
    """(sha256, node, path) of every verified model replica, by plain SQL."""
    with sqlite3.connect(catalog_db) as con:
        return set(
            con.execute(
                "SELECT r.sha256, r.node, r.path FROM replicas r "
                "JOIN artifacts a ON a.sha256 = r.sha256 "
                "WHERE a.kind = 'model' AND r.state = 'verified'"
            )
        )


def promoted_sha(catalog_db: Path) -> str | None:
    with sqlite3.connect(catalog_db) as con:
        row = con.execute(
            "SELECT sha256 FROM aliases WHERE kind = 'model_promoted' AND config = ?", (CONFIG,)
        ).fetchone()
    return row[0] if row else None


def promote(resources, instance) -> dict:
    """One `models/promoted` run: its metadata values and {check name: passed}."""
    run = dg.materialize(
        [models_promoted], partition_key=CONFIG, instance=instance, resources=resources
    )
    assert run.success
    [mat] = run.asset_materializations_for_node(models_promoted.op.name)
    checks = {c.check_name: c.passed for c in run.get_asset_check_evaluations()}
    return {**{k: v.value for k, v in mat.metadata.items()}, "checks": checks}


def promote_first_candidate(fleet: Fleet, resources, instance) -> tuple[str, str, str]:
    """v1 reported and promoted: (trainer node, candidate path, v1 sha256)."""
    trainer = fleet.nodes_with_role("training")[0]
    root = Path(fleet.nodes[0].data_root).parents[1]
    path = write_candidate(root, trainer.name, CONFIG, 1)
    report(
        "candidate", CONFIG, trainer.name, path, instance=instance, fleet=fleet
    ).raise_for_problems()
    assert promote(resources, instance)["promoted"] is True
    return trainer.name, path, sha_of(Path(trainer.data_root) / path)


def overwrite_with_v2(fleet: Fleet, node: str, path: str) -> str:
    """Training writes its next model over the same name (same size, other bytes)."""
    target = Path(fleet.node(node).data_root) / path
    old = target.read_bytes()
    target.write_bytes(bytes(b ^ 0x5A for b in old))
    return sha_of(target)


def forge(instance: dg.DagsterInstance, node: str, path: str, sha256: str, size: int) -> None:
    """What a raw POST to /report_asset_materialization/models/candidate records."""
    instance.report_runless_asset_event(
        dg.AssetMaterialization(
            asset_key=["models", "candidate"],
            partition=CONFIG,
            metadata={
                "config": CONFIG,
                "node": node,
                "path": path,
                "sha256": sha256,
                "size": size,
                "promote": True,
            },
        )
    )


# ---- the defect ------------------------------------------------------------------------


def test_forged_report_naming_the_promoted_model_never_moves_it(fleet_env):
    fleet, resources, instance, catalog_db = fleet_env
    promote_first_candidate(fleet, resources, instance)
    durable = list(fleet.durable_nodes)
    v1 = promoted_sha(catalog_db)
    before_disk, before_rows = files_on_nodes(fleet), model_rows(catalog_db)
    holders = {n.name for n in durable if before_disk.get((n.name, CANONICAL)) == v1}
    assert holders == {n.name for n in durable} and len(holders) >= 2

    forged_paths = [
        CANONICAL,
        f"models/../models/canonical_{CONFIG}.pth",
        f"models/sub/../canonical_{CONFIG}.pth",
        f"models/./ringrift_best_{CONFIG}.pth",
    ]
    for path in forged_paths:
        forge(instance, durable[0].name, path, "f" * 64, 16384)
        found = candidate_from_event(
            instance.get_latest_materialization_event(dg.AssetKey(["models", "candidate"]))
        )
        assert isinstance(found, Rejected), path  # refused on receipt
        outcome = promote(resources, instance)
        assert outcome["promoted"] is False

    # The sending side refuses the same claims before recording anything.
    for path in forged_paths:
        sent = report("candidate", CONFIG, durable[0].name, path, instance=instance, fleet=fleet)
        assert not sent.ok and any(p.startswith("path: ") for p in sent.problems), path
    # And so does promotion itself, called directly.
    with pytest.raises(CandidateRejected):
        register_candidate(
            durable[0], CANONICAL, "f" * 64, CONFIG, resources["catalog"], resources["transports"]
        )

    assert files_on_nodes(fleet) == before_disk  # nothing moved, nothing deleted
    for node in durable:
        link = Path(node.data_root) / BEST
        assert os.readlink(link) == f"canonical_{CONFIG}.pth" and sha_of(link) == v1
        assert not (Path(node.data_root) / "quarantine").exists()
    assert model_rows(catalog_db) == before_rows
    assert promoted_sha(catalog_db) == v1


def test_stale_candidate_report_never_moves_a_file(fleet_env):
    fleet, resources, instance, catalog_db = fleet_env
    trainer, path, v1 = promote_first_candidate(fleet, resources, instance)
    assert (v1, trainer, path) in model_rows(catalog_db)
    v2 = overwrite_with_v2(fleet, trainer, path)
    before_disk = files_on_nodes(fleet)

    # The newest report is still v1's, decided when v1 was promoted: it is not decided
    # again, and nothing takes v2 away.
    outcome = promote(resources, instance)
    assert outcome["promoted"] is False and "no candidate reported" in outcome["reason"]
    assert files_on_nodes(fleet) == before_disk
    assert sha_of(Path(fleet.node(trainer).data_root) / path) == v2
    assert promoted_sha(catalog_db) == v1

    # A forged report of the right path with a wrong digest loses nothing either; the
    # catalog forgets the v1 copy it had at that path, the durable copies remain.
    forge(instance, trainer, path, "e" * 64, 16384)
    outcome = promote(resources, instance)
    assert outcome["promoted"] is False and outcome["checks"]["candidate_report_accepted"] is False
    assert f"hashes to {v2}" in outcome["reason"] and "report rejected" in outcome["reason"]
    assert files_on_nodes(fleet) == before_disk
    rows = model_rows(catalog_db)
    assert not {r for r in rows if r[1:] == (trainer, path)}
    assert {r for r in rows if r[0] == v1} == {(v1, n.name, CANONICAL) for n in fleet.durable_nodes}
    assert promoted_sha(catalog_db) == v1


def test_stale_candidate_row_is_rehashed_before_it_is_a_copy_source(fleet_env):
    """v1 registered, then overwritten by training before it was placed: the row is
    dropped on re-hash, nothing is copied from it, the file is untouched."""
    fleet, resources, instance, catalog_db = fleet_env
    catalog: Catalog = resources["catalog"]
    catalog.sync_nodes(fleet.nodes)
    trainer = fleet.nodes_with_role("training")[0]
    root = Path(fleet.nodes[0].data_root).parents[1]
    path = write_candidate(root, trainer.name, CONFIG, 3)
    v1 = sha_of(Path(trainer.data_root) / path)
    register_candidate(trainer, path, v1, CONFIG, catalog, resources["transports"])
    assert model_rows(catalog_db) == {(v1, trainer.name, path)}
    v2 = overwrite_with_v2(fleet, trainer.name, path)
    before_disk = files_on_nodes(fleet)

    placement = place_promoted(
        CONFIG, v1, fleet.durable_nodes, fleet, catalog, resources["transports"]
    )
    assert placement.holders == [] and placement.moved.copies == 0
    assert placement.moved.failures == []  # nothing tried from a source known to be wrong
    assert len(placement.changed_sources) == 1 and v2[:12] in placement.changed_sources[0]
    assert model_rows(catalog_db) == set()
    assert files_on_nodes(fleet) == before_disk


def test_promoted_model_reaches_gpu_nodes_from_durable_copies_after_the_candidate_changed(
    fleet_env,
):
    fleet, resources, instance, catalog_db = fleet_env
    trainer, path, v1 = promote_first_candidate(fleet, resources, instance)
    v2 = overwrite_with_v2(fleet, trainer, path)
    changed = []
    for node in fleet.gpu_nodes:
        run = dg.materialize(
            [models_on_node], partition_key=node.name, instance=instance, resources=resources
        )
        assert run.success
        [mat] = run.asset_materializations_for_node(models_on_node.op.name)
        changed += mat.metadata["changed_sources"].value
        assert sha_of(Path(node.data_root) / CANONICAL) == v1
    assert sha_of(Path(fleet.node(trainer).data_root) / path) == v2
    assert len(changed) == 1 and f"{trainer}: {path} now hashes to {v2[:12]}" in changed[0]
    assert not {r for r in model_rows(catalog_db) if r[1:] == (trainer, path)}


# ---- the path rule, a pure decision ------------------------------------------------------

COMPONENTS = ["models", "sub", "training", "..", ".", "", "candidate_hex8_2p.pth",
              f"canonical_{CONFIG}.pth", f"ringrift_best_{CONFIG}.pth", "Canonical_x.pth",
              "RINGRIFT_BEST_x.pth", "x.pth"]  # fmt: skip


def oracle_accepts(path: str) -> bool:
    """Written from the issue: a relative path, no `..`, under models/, not a name
    fleetsync publishes (any case)."""
    if path.startswith("/"):
        return False
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if not parts or ".." in parts or len(parts) < 2 or parts[0] != "models":
        return False
    return not parts[-1].lower().startswith(("canonical_", "ringrift_best_"))


@given(
    lead=st.sampled_from(["", "/", "./"]),
    parts=st.lists(st.sampled_from(COMPONENTS), min_size=1, max_size=5),
)
def test_candidate_path_rule(lead: str, parts: list[str]) -> None:
    path = lead + "/".join(parts)
    accepted = candidate_path_problem(path) is None
    assert accepted == oracle_accepts(path), path
    if accepted:  # what passes resolves under models/ to a non-published name
        resolved = posixpath.normpath(path)
        assert resolved.startswith("models/")
        assert not posixpath.basename(resolved).lower().startswith("canonical_")


def test_an_older_explicit_promotion_is_never_replayed_when_the_newest_report_goes_stale(
    fleet_env,
):
    """A then B promoted explicitly; B's node leaves the inventory, so B's report is no
    longer valid. The next run must not fall back to A's older report and roll the
    promoted model back to A."""
    fleet, resources, instance, catalog_db = fleet_env

    def model(node: str, name: str, byte: int) -> str:
        path = Path(fleet.node(node).data_root) / "models" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(bytes([byte]) * 50_000)
        return f"models/{name}"

    a = model("train-1", "cand_a.pth", 1)
    report("candidate", CONFIG, "train-1", a, promote=True, instance=instance,
           fleet=fleet).raise_for_problems()  # fmt: skip
    promote(resources, instance)
    b = model("gpu-1", "cand_b.pth", 2)
    report("candidate", CONFIG, "gpu-1", b, promote=True, instance=instance,
           fleet=fleet).raise_for_problems()  # fmt: skip
    promote(resources, instance)
    b_sha = sha_of(Path(fleet.node("gpu-1").data_root) / b)
    assert promoted_sha(catalog_db) == b_sha

    fleet_file = Path(resources["inventory"].path)
    doc = yaml.safe_load(fleet_file.read_text())
    doc["nodes"] = [n for n in doc["nodes"] if n["name"] != "gpu-1"]
    fleet_file.write_text(yaml.safe_dump(doc, sort_keys=False))
    outcome = promote(resources, instance)

    assert outcome["promoted"] is False
    assert promoted_sha(catalog_db) == b_sha
