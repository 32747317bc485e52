"""What counts as a refusal ("I don't know", "the documents do not cover that"): one
definition for the synthesis filter that drops generated refusals and for evaluation,
which counts refusals on unanswerable and answerable questions."""

from __future__ import annotations

import re

_REFUSAL = re.compile(
    r"\b(i (do not|don't|cannot|can't) (know|answer|say|help)|(cannot|can't) answer|(do|does) not cover"
    r"|not (covered|mentioned|provided|stated|given) in|no information|not sure)\b",
    re.IGNORECASE,
)


def is_refusal(answer: str) -> bool:
    return bool(_REFUSAL.search(answer))
