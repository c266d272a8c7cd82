"""Secret files served with sentinels: a recognised file labelled secret reaches the sandbox with each value
replaced by a per-run sentinel, and what the sandbox writes back gets the real bytes of the values it left alone.

`registry.parse(path, data)` takes a file apart into values (`items.Item`: key path + byte span), or says it
cannot (None); `serve.Sentinels` is one run's table that serves and restores."""

from ifc.secretfiles.items import Item, Parsed, Unparsable, join_key, key_matches, split_key
from ifc.secretfiles.registry import FORMATS, format_of, parse
from ifc.secretfiles.serve import SENTINEL_PREFIX, Placed, Sentinels, Served, Unmergeable

__all__ = ["FORMATS", "SENTINEL_PREFIX", "Item", "Parsed", "Placed", "Sentinels", "Served", "Unmergeable", "Unparsable",
           "format_of", "join_key", "key_matches", "parse", "split_key"]
