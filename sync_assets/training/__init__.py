"""NPZ training shards: validation and the reference exporter (shipped to nodes), export,
publication and placement (`shards.py`), and the `training/*` assets."""
