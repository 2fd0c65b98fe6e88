"""Score: every input shard through the pipeline's scorers, on Ray, into the store."""
