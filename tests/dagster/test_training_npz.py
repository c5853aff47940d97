"""NPZ shards: the validator, the reference exporter, the Exporter resource, and the
`training/npz` + `training/npz_on_node` assets on a local fleet."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import zipfile
from pathlib import Path

import dagster as dg
import numpy as np
import pydantic
import pytest

from resources.catalog import Catalog
from resources.exporter import Exporter, render_command
from resources.inventory import FleetInventory
from resources.transport import Transports
from resources.transport.local import sha256_file
from sync_assets.demo.pipeline import build_demo_fleet
from sync_assets.demo.synth_games import generate_game_db
from sync_assets.fleet.assets import node_status
from sync_assets.fleet.inventory import load_inventory
from sync_assets.games.assets import games_canonical, games_selfplay
from sync_assets.games.merge import merge_snapshots
from sync_assets.training import export_reference
from sync_assets.training.assets import training_npz, training_npz_on_node
from sync_assets.training.export import NPZ_CHECK, REFERENCE, ExportFailed
from sync_assets.training.export_reference import HISTORY, export
from sync_assets.training.npz_check import array_sha256, check_npz
from sync_assets.training.shards import (
    NPZ_ALIAS,
    NPZ_KIND,
    export_npz,
    node_shard_path,
    quarantine_path,
    shard_path,
)

CONFIG = "hex8_2p"


# ---- fixtures: a small synthetic canonical DB and its shard ----------------------------


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A node DB (two configs, some incomplete games), merged into a canonical, exported."""
    root = tmp_path_factory.mktemp("corpus")
    node_db = generate_game_db(
        root / "node" / "selfplay.db",
        configs=[CONFIG, "square8_2p"],
        n_games=240,
        seed=11,
        incomplete_fraction=0.15,
    ).path
    canonical = root / "canonical_hex8_2p.db"
    merge_snapshots(canonical, CONFIG, [(str(node_db), "node:games/selfplay.db")])
    shard = root / "good.npz"
    export(canonical, shard, CONFIG)
    return {"root": root, "node_db": node_db, "canonical": canonical, "shard": shard}


def rewrite(src: Path, dst: Path, *, drop: tuple[str, ...] = (), **replace: np.ndarray) -> Path:
    """A copy of a shard with arrays dropped or replaced and data_checksums recomputed,
    so that only the intended defect is present."""
    with np.load(src, allow_pickle=True) as z:
        arrays = {k: z[k] for k in z.files if k not in drop and k != "data_checksums"}
    arrays.update(replace)
    sums = {k: array_sha256(v) for k, v in arrays.items()}
    np.savez_compressed(dst, **arrays, data_checksums=np.array(json.dumps(sums)))
    return dst


def independent_samples(node_db: Path, config: str) -> int:
    """Move rows of the complete games of `config` in the node DB, counted in SQL from
    the source (neither merge.py nor the exporter involved)."""
    board, players = config.rsplit("_", 1)
    con = sqlite3.connect(f"file:{node_db}?mode=ro", uri=True)
    try:
        return con.execute(
            """SELECT count(*) FROM game_moves m JOIN games g USING (game_id)
               WHERE g.board_type = ? AND g.num_players = ?
                 AND g.game_status IN ('completed', 'finished')
                 AND (SELECT count(*) FROM game_moves c WHERE c.game_id = g.game_id) >= 5""",
            (board, int(players.rstrip("p"))),
        ).fetchone()[0]
    finally:
        con.close()


# ---- the validator ---------------------------------------------------------------------


def _absurd(src: Path, dst: Path) -> Path:
    """The 955 MB incident: `features` claims 22 billion rows over a few bytes of data."""
    with zipfile.ZipFile(src) as old, zipfile.ZipFile(dst, "w") as new:
        for info in old.infolist():
            data = old.read(info)
            if info.filename == "features.npy":
                header = {
                    "descr": "<f4",
                    "fortran_order": False,
                    "shape": (22_000_000_000, 40, 9, 9),
                }
                with new.open("features.npy", "w", force_zip64=True) as fp:
                    np.lib.format.write_array_header_1_0(fp, header)
                    fp.write(b"\0" * 64)
            else:
                new.writestr(info, data)
    return dst


def _checksum_mismatch(src: Path, dst: Path) -> Path:
    """`values` changed after the checksums were written (the old ones kept)."""
    with np.load(src, allow_pickle=True) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["values"] = -arrays["values"]
    np.savez_compressed(dst, **arrays)
    return dst


def _truncated(src: Path, dst: Path) -> Path:
    data = src.read_bytes()
    dst.write_bytes(data[: len(data) // 2])
    return dst


def _garbage(src: Path, dst: Path) -> Path:
    dst.write_bytes(np.random.default_rng(0).bytes(4096))
    return dst


def test_good_shard_is_valid(corpus):
    result = check_npz(corpus["shard"])
    assert result["ok"], result["problems"]
    assert result["problems"] == []
    assert result["sha256"] == sha256_file(corpus["shard"])
    assert result["samples"] == result["metadata"]["sample_count"] > 0


@pytest.mark.parametrize(
    ("make", "problems"),
    [
        (lambda s, d: rewrite(s, d, drop=("values",)), ["missing array 'values'"]),
        (
            lambda s, d: rewrite(s, d, globals=np.load(s)["globals"][:-1]),
            ["unequal N: 'globals' has {n_minus_1} rows, 'features' has {n}"],
        ),
        (
            _absurd,
            [
                "array 'features': dimension 22000000000 > 1e9 "
                "(absurd; shape [22000000000, 40, 9, 9])"
            ],
        ),
        (_checksum_mismatch, ["checksum mismatch for 'values'"]),
        (_truncated, ["not a zip archive (truncated or corrupt): File is not a zip file"]),
        (_garbage, ["not a zip archive (truncated or corrupt): File is not a zip file"]),
        (
            lambda s, d: rewrite(s, d, values=np.load(s)["values"] * 3),
            ["array 'values': {decisive} value(s) outside -1..1 or not finite"],
        ),
        (
            lambda s, d: rewrite(s, d, features=np.load(s)["features"][:, :, :, :8]),
            [
                "array 'features': shape [{n}, 40, 9, 8], expected [N, C, H, W] with "
                "C in [40, 56, 64] and H = W in [8, 9, 19, 25]"
            ],
        ),
        (
            lambda s, d: rewrite(s, d, values=np.load(s)["values"].astype(np.float64)),
            ["array 'values': dtype float64, expected float32"],
        ),
    ],
    ids=[
        "missing-values",
        "unequal-n",
        "absurd-dims",
        "checksum-mismatch",
        "truncated",
        "garbage",
        "values-out-of-range",
        "features-not-square",
        "values-dtype",
    ],  # fmt: skip
)
def test_invalid_shards_say_exactly_why(corpus, tmp_path, make, problems):
    with np.load(corpus["shard"], allow_pickle=True) as z:
        n = z["values"].shape[0]
        decisive = int(np.count_nonzero(z["values"]))
    bad = make(corpus["shard"], tmp_path / "bad.npz")
    result = check_npz(bad)
    assert not result["ok"]
    assert result["problems"] == [
        p.format(n=n, n_minus_1=n - 1, decisive=decisive) for p in problems
    ]


def test_flipped_byte_inside_an_array_is_caught(corpus, tmp_path):
    data = bytearray(corpus["shard"].read_bytes())
    with zipfile.ZipFile(corpus["shard"]) as z:
        info = z.getinfo("values.npy")
    data[info.header_offset + 200] ^= 0xFF  # inside the compressed `values` data
    bad = tmp_path / "flipped.npz"
    bad.write_bytes(bytes(data))
    result = check_npz(bad)
    assert not result["ok"]
    assert len(result["problems"]) == 1
    # zipfile's CRC-32 or zlib notices, whether on the header read or the data pass.
    assert result["problems"][0].startswith(("array 'values': unreadable (", "corrupt array data"))


def test_missing_file_and_cli(tmp_path, corpus):
    assert check_npz(tmp_path / "nope.npz")["problems"] == [
        f"no such file: {tmp_path / 'nope.npz'}"
    ]
    done = subprocess.run(
        [sys.executable, "-I", "-"], input=NPZ_CHECK.bundle, capture_output=True,
        cwd=tmp_path, check=False,
    )  # fmt: skip
    assert done.returncode == 2  # usage
    ok = subprocess.run(
        [sys.executable, "-I", "-", str(corpus["shard"])], input=NPZ_CHECK.bundle,
        capture_output=True, cwd=tmp_path, check=False,
    )  # fmt: skip
    assert ok.returncode == 0 and json.loads(ok.stdout)["ok"]


# ---- the reference exporter ------------------------------------------------------------


def test_reference_export_has_one_sample_per_move_of_complete_games(corpus):
    expected = independent_samples(corpus["node_db"], CONFIG)
    assert expected > 1000
    with np.load(corpus["shard"], allow_pickle=True) as z:
        assert z["features"].shape == (expected, 40, 9, 9)
        assert {k: z[k].shape[0] for k in z.files if z[k].ndim} == dict.fromkeys(
            [k for k in z.files if z[k].ndim], expected
        )
        values, values_mp = z["values"], z["values_mp"]
        assert set(np.unique(values)) <= {-1.0, 0.0, 1.0}
        assert np.allclose(values_mp[:, 2:], 0) and np.all(np.abs(values_mp) <= 1)
        lengths = [
            (i.size, v.size) for i, v in zip(z["policy_indices"], z["policy_values"], strict=True)
        ]
        assert all(a == b and a > 0 for a, b in lengths)
        meta = z["metadata"][()]
        assert meta["sample_count"] == expected and meta["export_time"] == meta["newest_game_time"]
        features, moves = z["features"], z["move_numbers"]
    # The history planes: sample k (not a game's first move) marks the previous move.
    con = sqlite3.connect(corpus["canonical"])
    rows = con.execute(
        "SELECT m.player, json_extract(m.move_json, '$.to.x'), json_extract(m.move_json, '$.to.y')"
        " FROM games g JOIN game_moves m USING (game_id)"
        " WHERE g.board_type = 'hex8' AND g.num_players = 2 ORDER BY g.game_id, m.move_number"
    ).fetchall()
    con.close()
    assert len(rows) == expected
    for k in np.flatnonzero(moves > 0)[:200]:
        player, x, y = rows[k - 1]
        assert features[k, (player - 1) * HISTORY, x, y] == 1.0
    first = np.flatnonzero(moves == 0)
    assert features[first].sum() == 0


def test_reference_export_is_deterministic_and_ships_alone(corpus, tmp_path):
    again = export(corpus["canonical"], tmp_path / "again.npz", CONFIG)
    assert again["check"]["sha256"] == sha256_file(corpus["shard"])
    # As shipped to a node: source on stdin, isolated interpreter, no fleetsync installed.
    out = tmp_path / "shipped.npz"
    done = subprocess.run(
        [sys.executable, "-I", "-", str(corpus["canonical"]), str(out), CONFIG],
        input=REFERENCE.bundle, capture_output=True, cwd=tmp_path,
        check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr.decode()
    assert json.loads(done.stdout)["check"]["ok"]
    assert sha256_file(out) == sha256_file(corpus["shard"])
    assert [p.name for p in tmp_path.iterdir() if ".fleetsync-tmp-" in p.name] == []


def test_reference_export_refuses_an_empty_corpus(corpus, tmp_path):
    with pytest.raises(export_reference.ExportError, match="no complete square19_4p game"):
        export(corpus["canonical"], tmp_path / "x.npz", "square19_4p")
    assert list(tmp_path.iterdir()) == []


# ---- the Exporter resource -------------------------------------------------------------


def test_command_template_is_checked_and_filled_word_by_word():
    argv = render_command("train-export --db {db} --out={out} -c {config}", "a b.db", "o;x", "c")
    assert argv == ["train-export", "--db", "a b.db", "--out=o;x", "-c", "c"]
    for bad, why in [
        ("exp {db}", "no {out} placeholder"),
        ("exp {db} {out} {path}", "unknown placeholder {path}"),
        ("exp {db} {out} {out.x}", "unknown placeholder {out.x}"),
        ("exp '{db} {out}", "not a valid command line"),
    ]:
        with pytest.raises(pydantic.ValidationError, match=why.replace("{", r"\{")):
            Exporter(command=bad)


# ---- the assets on a local fleet -------------------------------------------------------


@pytest.fixture
def fleet_env(tmp_path):
    fleet_file = build_demo_fleet(tmp_path / "fleet", node_count=5, games_per_node=60)
    resources = {
        "inventory": FleetInventory(path=str(fleet_file)),
        "catalog": Catalog(url=f"sqlite:///{tmp_path / 'catalog.db'}"),
        "transports": Transports(),
        "exporter": Exporter(),
    }
    with dg.instance_for_test() as instance:
        fleet = load_inventory(fleet_file)
        instance.add_dynamic_partitions("nodes", [n.name for n in fleet.nodes])
        yield fleet, resources, instance


def materialize(assets, key, resources, instance) -> dg.ExecuteInProcessResult:
    return dg.materialize(
        assets, partition_key=key, instance=instance, resources=resources, raise_on_error=False
    )


def collect_and_merge(fleet, resources, instance, configs) -> None:
    for asset in (node_status, games_selfplay):
        for n in fleet.nodes:
            assert materialize([asset], n.name, resources, instance).success
    for config in configs:
        assert materialize([games_canonical], config, resources, instance).success


def check_passed(result: dg.ExecuteInProcessResult, name: str) -> bool:
    [evaluation] = [e for e in result.get_asset_check_evaluations() if e.check_name == name]
    return evaluation.passed


def latest_metadata(result: dg.ExecuteInProcessResult) -> dict:
    [event] = result.get_asset_materialization_events()
    return {k: v.value for k, v in event.materialization.metadata.items()}


def test_export_publish_replicate_place_and_skip(fleet_env):
    fleet, resources, instance = fleet_env
    catalog: Catalog = resources["catalog"]
    collect_and_merge(fleet, resources, instance, [CONFIG])

    first = materialize([training_npz], CONFIG, resources, instance)
    assert first.success
    assert check_passed(first, "npz_structure") and check_passed(first, "durable_copies")
    meta = latest_metadata(first)
    sha = catalog.alias(NPZ_ALIAS, CONFIG)
    assert meta["exported"] and meta["sha256"] == sha and meta["samples"] > 0
    assert meta["samples_per_s"] > 0 and meta["bytes"] > 0 and meta["games"] > 0
    durable = sorted(n.name for n in fleet.durable_nodes)
    reps = catalog.replicas_frame([NPZ_KIND])
    assert sorted(reps.loc[reps["sha256"] == sha, "node"]) == durable
    for name in durable:
        on_disk = Path(fleet.node(name).data_root) / shard_path(CONFIG, sha)
        assert sha256_file(on_disk) == sha and check_npz(on_disk)["ok"]
        assert not [p for p in on_disk.parent.parent.rglob("*") if ".fleetsync-tmp-" in p.name]

    placed = materialize([training_npz_on_node], "train-1", resources, instance)
    assert placed.success and check_passed(placed, "verified_on_node")
    on_train = Path(fleet.node("train-1").data_root) / node_shard_path(CONFIG)
    assert sha256_file(on_train) == sha
    gpu = materialize([training_npz_on_node], "gpu-1", resources, instance)
    assert gpu.success and latest_metadata(gpu)["training_node"] is False
    assert not (Path(fleet.node("gpu-1").data_root) / "training").exists()

    # Unchanged canonical DB: nothing exported, nothing moved, the shard stays current.
    transfers_before = len(catalog.transfers_frame())
    again = materialize([training_npz], CONFIG, resources, instance)
    assert again.success and check_passed(again, "npz_structure")
    meta = latest_metadata(again)
    assert meta["exported"] is False and "unchanged" in meta["skipped"]
    assert meta["bytes_moved"] == 0 and meta["sha256"] == sha
    placed_again = materialize([training_npz_on_node], "train-1", resources, instance)
    assert latest_metadata(placed_again)["bytes_moved"] == 0
    assert len(catalog.transfers_frame()) == transfers_before

    # A shard removed behind fleetsync's back is noticed and replaced, verified.
    on_train.unlink()
    healed = materialize([training_npz_on_node], "train-1", resources, instance)
    assert check_passed(healed, "verified_on_node") and sha256_file(on_train) == sha


def test_corrupt_shard_is_quarantined_and_never_reaches_training_nodes(fleet_env, tmp_path):
    fleet, resources, instance = fleet_env
    catalog: Catalog = resources["catalog"]
    collect_and_merge(fleet, resources, instance, [CONFIG])
    assert materialize([training_npz], CONFIG, resources, instance).success
    good = catalog.alias(NPZ_ALIAS, CONFIG)
    assert materialize([training_npz_on_node], "train-1", resources, instance).success

    # New games change the canonical DB; this time the training repo's exporter writes junk.
    extra = Path(fleet.node("gpu-1").data_root) / "games" / "gauntlet_hex8_2p.db"
    generate_game_db(extra, configs=[CONFIG], n_games=30, seed=99)
    assert materialize([games_selfplay], "gpu-1", resources, instance).success
    assert materialize([games_canonical], CONFIG, resources, instance).success
    script = tmp_path / "bad_exporter.py"
    script.write_text("import sys\nopen(sys.argv[1], 'wb').write(b'PK\\x03\\x04 not a shard')\n")
    bad = {**resources, "exporter": Exporter(command=f"{sys.executable} {script} {{out}} {{db}}")}

    result = materialize([training_npz], CONFIG, bad, instance)
    assert not check_passed(result, "npz_structure")
    meta = latest_metadata(result)
    quarantined = meta["quarantined"]
    assert quarantined.startswith("quarantine/training/")
    holder = meta["export_node"]
    assert (Path(fleet.node(holder).data_root) / quarantined).is_file()
    bad_sha = meta["exported_sha256"]
    assert catalog.replicas_frame().query("sha256 == @bad_sha").empty
    assert catalog.alias(NPZ_ALIAS, CONFIG) == good

    # The training node keeps the last good shard; the junk is copied nowhere.
    assert materialize([training_npz_on_node], "train-1", resources, instance).success
    on_train = Path(fleet.node("train-1").data_root) / node_shard_path(CONFIG)
    assert sha256_file(on_train) == good
    assert bad_sha not in set(catalog.transfers_frame()["sha256"])
    assert quarantine_path(CONFIG, bad_sha) == quarantined


def test_training_repo_command_exports_and_is_validated_on_the_node(fleet_env):
    fleet, resources, instance = fleet_env
    catalog: Catalog = resources["catalog"]
    collect_and_merge(fleet, resources, instance, ["square8_2p"])
    # A command that fails: nothing published, nothing left behind, the reason named.
    failing = Exporter(command=f"{sys.executable} -c 'import sys; sys.exit(3)' {{db}} {{out}}")
    with pytest.raises(ExportFailed, match=r"exporter command failed \(exit 3\)"):
        export_npz("square8_2p", fleet, catalog, resources["transports"], failing)
    assert catalog.alias(NPZ_ALIAS, "square8_2p") is None
    for n in fleet.nodes:
        assert not list(Path(n.data_root).glob("training/.fleetsync-tmp-*")), n.name

    command = f"{sys.executable} -m sync_assets.training.export_reference {{db}} {{out}} {{config}}"
    custom = {**resources, "exporter": Exporter(command=command, node="train-1")}
    result = materialize([training_npz], "square8_2p", custom, instance)
    assert result.success and check_passed(result, "npz_structure")
    meta = latest_metadata(result)
    assert meta["export_node"] == "train-1" and meta["exporter"] == command
    sha = catalog.alias(NPZ_ALIAS, "square8_2p")
    # Exported on a training node: it still reaches policy on the durable nodes.
    reps = catalog.replicas_frame([NPZ_KIND])
    holders = set(reps.loc[reps["sha256"] == sha, "node"])
    assert {n.name for n in fleet.durable_nodes} <= holders


# ---- the same on real sshd nodes -------------------------------------------------------


@pytest.mark.cluster
def test_export_and_placement_over_ssh(tmp_path, sshd_fleet):
    """Exporter and validator shipped over SSH (`python3 -` on the node), the shard
    renamed there, copied node to node, verified on the training node."""
    root = tmp_path / "demo"
    sshd = sshd_fleet(["coord-1", "store-1", "train-1", "gpu-1"], root=root)
    fleet_file = build_demo_fleet(root, node_count=4, games_per_node=30, sshd=sshd)
    fleet = load_inventory(fleet_file)
    assert {n.transport for n in fleet.nodes} == {"ssh"}
    resources = {
        "inventory": FleetInventory(path=str(fleet_file)),
        "catalog": Catalog(url=f"sqlite:///{tmp_path / 'catalog.db'}"),
        "transports": Transports(),
        "exporter": Exporter(),
    }
    catalog: Catalog = resources["catalog"]
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("nodes", [n.name for n in fleet.nodes])
        collect_and_merge(fleet, resources, instance, [CONFIG])
        result = materialize([training_npz], CONFIG, resources, instance)
        assert result.success and check_passed(result, "npz_structure")
        sha = catalog.alias(NPZ_ALIAS, CONFIG)
        for node in fleet.durable_nodes:
            path = Path(node.data_root) / shard_path(CONFIG, sha)
            assert sha256_file(path) == sha and check_npz(path)["ok"], node.name
        placed = materialize([training_npz_on_node], "train-1", resources, instance)
        assert placed.success and check_passed(placed, "verified_on_node")
        assert sha256_file(Path(fleet.node("train-1").data_root) / node_shard_path(CONFIG)) == sha
