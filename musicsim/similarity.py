"""How two embeddings are compared: cosine or euclidean (paper 5.2), one definition for every reader.

The label side, which tracks *count* as similar, is ``musicsim.relevance``. Here "similarity" is only
the score between two vectors: the head (in TF), the evaluation protocol and the index (in numpy)
all take their names and checks from this module.
"""
from __future__ import annotations

SIMILARITIES = ("cosine", "euclidean")


def check_similarity(similarity: str) -> str:
    """``similarity`` itself when it is one of `SIMILARITIES`, else a ValueError naming the choices.

    >>> check_similarity("cosine")
    'cosine'
    """
    if similarity not in SIMILARITIES:
        raise ValueError(f"similarity must be one of {SIMILARITIES}, got {similarity!r}")
    return similarity
