"""Text as token ids: a word vocabulary built from the training split alone (no download, no leak from
validation or test), and the id tensors a text student trains on. The vocabulary travels with the model
(`as_dict`), so a deployer turns raw text into the model's input without this package:

    ids = [vocabulary.get(word, 1) for word in re.findall(pattern, text.lower())][:max_length], padded with 0
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from typing import Any, Iterable

import torch

from lepton_ray.errors import DataError

TOKEN_PATTERN = r"[a-z0-9']+"
PAD_ID, UNKNOWN_ID = 0, 1
FIRST_WORD_ID = 2
ENCODING = "vocabulary = {word: first_word_id + i for i, word in enumerate(words)}; ids = [vocabulary.get(word, unknown_id) for word in re.findall(pattern, text.lower())][:max_length], padded with pad_id to max_length, int64, layout NL"


def words_of(text: str) -> list[str]:
    """Lower-cased word tokens: runs of letters, digits and apostrophes."""
    return re.findall(TOKEN_PATTERN, text.lower())


@dataclass(frozen=True)
class WordVocabulary:
    """The `max_words` most frequent training words seen at least `min_count` times; id 0 pads, 1 is any other word."""

    words: tuple[str, ...]
    """In id order from `FIRST_WORD_ID`: most frequent first, ties alphabetical (the same texts give the same ids)."""
    max_length: int
    """Tokens per input: longer texts keep their first `max_length` words, shorter ones are padded."""

    def __post_init__(self) -> None:
        if self.max_length < 1:
            raise DataError(f"data.options.max_length: {self.max_length} must be at least 1")
        object.__setattr__(self, "_ids", {word: index + FIRST_WORD_ID for index, word in enumerate(self.words)})  # frozen: set once

    @classmethod
    def build(cls, texts: Iterable[str], max_words: int, min_count: int, max_length: int) -> "WordVocabulary":
        counts = Counter(word for text in texts for word in words_of(text))
        kept = sorted((word for word, count in counts.items() if count >= min_count), key=lambda word: (-counts[word], word))[:max_words]
        if not kept:
            raise DataError(f"data.options.min_count: no training word occurs {min_count} times; lower min_count or check the text column")
        return cls(tuple(kept), max_length)

    @property
    def size(self) -> int:
        """Embedding rows a model needs: the words plus padding and unknown."""
        return len(self.words) + FIRST_WORD_ID

    def encode(self, texts: Iterable[str]) -> torch.Tensor:
        """(N, max_length) int64 token ids."""
        rows = []
        for text in texts:
            ids = [self._ids.get(word, UNKNOWN_ID) for word in words_of(text)][: self.max_length]
            rows.append(ids + [PAD_ID] * (self.max_length - len(ids)))
        return torch.tensor(rows, dtype=torch.long).reshape(-1, self.max_length)

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON: everything a deployer needs to reproduce `encode`."""
        return {
            "kind": "words", "lowercase": True, "pattern": TOKEN_PATTERN, "pad_id": PAD_ID, "unknown_id": UNKNOWN_ID,
            "first_word_id": FIRST_WORD_ID, "max_length": self.max_length, "words": list(self.words),
        }

    @classmethod
    def from_dict(cls, facts: dict[str, Any]) -> "WordVocabulary":
        if facts.get("kind") != "words" or facts.get("pattern") != TOKEN_PATTERN:
            raise DataError(f"vocabulary: kind {facts.get('kind')!r} / pattern {facts.get('pattern')!r} is not this version's word vocabulary")
        return cls(tuple(facts["words"]), int(facts["max_length"]))
