"""Built-in stages. Importing this package registers them (see ``curate.stages.base``)."""

from curate.stages import (  # noqa: F401
    caption_stats,
    clip,
    exact_dedup,
    exact_hash,
    image_info,
    in_set,
    language,
    sql_rule,
    threshold,
    top_fraction,
)
