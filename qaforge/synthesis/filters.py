"""The quality filters generated pairs must pass: grounding in their chunk, and not
repeating an earlier question in other words."""

from __future__ import annotations

from datasketch import MinHash, MinHashLSH

from qaforge.synthesis.offline import content_tokens, words


def grounding(answer: str, context: str) -> float:
    """Share of the answer's content tokens that occur in the context."""
    tokens = content_tokens(answer)
    if not tokens:
        return 0.0
    vocabulary = set(content_tokens(context))
    return sum(t in vocabulary for t in tokens) / len(tokens)


class QuestionIndex:
    """Finds questions that repeat an earlier one in other words: Jaccard similarity
    of their content words, with MinHash LSH to find candidates at scale."""

    def __init__(self, threshold: float) -> None:
        self.threshold = threshold
        self.lsh = MinHashLSH(threshold=threshold, num_perm=64)
        self.words: dict[str, set[str]] = {}

    def seen(self, question: str) -> bool:
        tokens = set(content_tokens(question)) or set(words(question))
        signature = MinHash(num_perm=64)
        for token in tokens:
            signature.update(token.encode())
        for key in self.lsh.query(signature):
            other = self.words[key]
            if len(tokens & other) / len(tokens | other) >= self.threshold:
                return True
        key = str(len(self.words))
        self.words[key] = tokens
        self.lsh.insert(key, signature)
        return False
