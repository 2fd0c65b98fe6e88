"""Ingest: URL lists (``urls``: reading them, the uid of each row) downloaded by img2dataset into
reproducible webdataset shards (``download``)."""
