"""Store: a scored pool, per scorer and per shard, keyed by content and scorer version."""
