"""curate: score once, select later: turn raw image-text pools into CLIP training sets."""

__version__ = "0.1.0"
