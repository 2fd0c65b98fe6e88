"""Write: the kept samples' original bytes into curated shards, exports and reshards."""
