"""Prompt choice for generated and read samples.

The wording itself lives in `lion_ros.prompts` (shared with the runtime, so the model is
trained on the phrasings users and the node send); this module only decides which template a
sample gets, plus the one template the runtime has no use for (VSR statements).
"""
from __future__ import annotations

import hashlib

VSR = 'Based on the image, is this statement true or false? "{caption}" Answer yes or no.'


def choice_for(key: str, variety_seed: int | None) -> int:
    """0 (the canonical template) when `variety_seed` is None, else a stable per-key index.

    Hashing the key (not Python's salted `hash`) keeps the choice identical across runs and
    worker processes; `lion_ros.prompts` takes it modulo the number of templates.
    """
    if variety_seed is None:
        return 0
    digest = hashlib.blake2b(f"{variety_seed}:{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")
