"""Turning results into the metadata an operator reads in the Dagster UI."""

from __future__ import annotations

import dagster as dg
import pandas as pd

from sync_assets.engine.replication import ReplicationResult

_COLUMN_TYPES = {"i": "int", "u": "int", "f": "float", "b": "bool"}


def table(frame: pd.DataFrame) -> dg.TableMetadataValue:
    """A DataFrame as a UI table, column types kept."""
    schema = dg.TableSchema(
        columns=[
            dg.TableColumn(str(c), _COLUMN_TYPES.get(frame[c].dtype.kind, "string"))
            for c in frame.columns
        ]
    )
    records = [
        dg.TableRecord({str(k): (v.item() if hasattr(v, "item") else v) for k, v in row.items()})
        for row in frame.to_dict("records")
    ]
    return dg.MetadataValue.table(records=records, schema=schema)


def transfer_metadata(moved: ReplicationResult) -> dict[str, dg.RawMetadataValue]:
    """Bytes, copies, throughput, and what was not planned and why (LESSONS 1)."""
    mb_s = moved.bytes_moved / moved.seconds / 1e6 if moved.seconds > 0 else 0.0
    return {
        "bytes_moved": moved.bytes_moved,
        "copies_made": moved.copies,
        "transfer_seconds": round(moved.seconds, 3),
        "throughput_mb_s": round(mb_s, 2),
        "not_planned": table(moved.blocked),
        # Replicas the catalog had but the disk did not: dropped, and repaired from elsewhere.
        "replicas_found_missing": len(moved.findings),
        "findings": dg.MetadataValue.json(moved.findings[:50]),
    }


def raise_on_failures(moved: ReplicationResult, what: str) -> None:
    """Fail the step (so its retry policy applies) naming every failed transfer."""
    if moved.failures:
        raise dg.Failure(
            description=f"{what}: {len(moved.failures)} transfer(s) failed: "
            + "; ".join(moved.failures[:5]),
            metadata={"failures": dg.MetadataValue.json(moved.failures)},
        )
