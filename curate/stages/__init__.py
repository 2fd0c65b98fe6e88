"""Built-in stages. Importing this package registers them (see ``curate.stages.base``)."""

from curate.stages import (  # noqa: F401
    caption_complexity,
    caption_stats,
    clip,
    clipcov,
    embedding_head,
    exact_dedup,
    exact_hash,
    image_complexity,
    image_info,
    in_set,
    language,
    metaclip_balance,
    metaclip_match,
    mode_clusters,
    ocr,
    parrot,
    semdedup,
    sql_rule,
    threshold,
    top_fraction,
)
