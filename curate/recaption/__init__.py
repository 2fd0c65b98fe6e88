"""Synthetic captions from the image (ALIP-style recaptioning) for the kept samples: a
captioning or image-text-to-text model per backend (transformers, openai, vllm), run through
the rewrite machinery (``curate.rewrite.engine``: cache, seeds, retries, validation)."""
