"""The quality filters generated pairs must pass: a question a person could have
written, grounding in their chunk, and not repeating an earlier question in other words."""

from __future__ import annotations

import re

from datasketch import MinHash, MinHashLSH

from qaforge.synthesis.offline import content_tokens, words


def grounding(answer: str, context: str) -> float:
    """Share of the answer's content tokens that occur in the context."""
    tokens = content_tokens(answer)
    if not tokens:
        return 0.0
    vocabulary = set(content_tokens(context))
    return sum(t in vocabulary for t in tokens) / len(tokens)


_WH = r"(?:what|which|who|whom|whose|how|when|where|why)"
# Words that cannot start the subject after "What do/does ...": verbs, and third-person
# pronouns, which point at nothing in a question asked on its own ("I" and "you" can).
_NOT_SUBJECT = r"(?:please|it|this|that|these|those|they|them|he|she|there|is|are|was|were|can|could|will|" \
    r"would|should|must|may|do|does|did|has|have)"
_MALFORMED = [
    ("repeated punctuation", re.compile(r"[?!.,;:]{2,}")),
    ("a question inside the question", re.compile(r"\?.*\S.*$")),
    ("a question word as the subject", re.compile(rf"^{_WH}\s+(?:do|does|is|are|did|can)\s+{_WH}\b", re.I)),
    # "Why is there a waiting list?" is English; "What is there?" on its own is not asked.
    ("a verb or pronoun as the subject",
     re.compile(rf"^{_WH}\s+(?:do|does|is|are)\s+(?!there\s+\w){_NOT_SUBJECT}\b", re.I)),
    ("a repeated word", re.compile(r"\b(\w+)\s+\1\b", re.I)),
    # "What is meant by renewing when you?": a subject cut off inside a clause.
    ("a clause cut off", re.compile(r"\b(?:(?i:when|if|while|because|and|or|to|of|with|you|we|they|your)"
                                    r"|the|a|an)\?$")),
]


def malformed(question: str) -> str | None:
    """What is wrong with a question no person would write, or None. The checks are
    about the shape of English questions only, never about a domain."""
    if len(question.split()) < 3:
        return "fewer than three words"
    if not question.rstrip().endswith("?"):
        return "no question mark at the end"
    return next((reason for reason, pattern in _MALFORMED if pattern.search(question.strip())), None)


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
