"""LLM caption rewriting (LaCLIP): prompts and output validation (the stage and its backends are
still to come; see issue 6)."""
