"""Ingest: URL lists downloaded by img2dataset into webdataset shards."""
