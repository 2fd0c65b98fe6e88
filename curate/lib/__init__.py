"""Building blocks the stages share: model loading and training, image decoding, clustering,
MetaCLIP metadata."""
