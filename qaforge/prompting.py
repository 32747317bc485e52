"""The one prompt format used by training, evaluation and serving."""

from __future__ import annotations

import secrets
import weakref
from collections.abc import Sequence
from typing import Any

from qaforge.records import Passage, Turn
from qaforge.retrieval import with_answer_words

# Neutral on purpose: a model trained with retrieval also sees passages that do not hold
# the answer (RAFT), and must learn when to use them rather than be told to trust them.
CONTEXT_INTRO = "Passages from the documents, which may help:"


def passage_header(passage: Passage) -> str:
    """What a passage is about, as a reader sees it above the text: its section's
    headings (docling's `contextualize` puts them there too), or the document's title
    when it has none. A section heading names the topic a chunk's text may never repeat
    ("Can I return items to a different branch?"), where a page title names the site."""
    return " > ".join(passage.headings) or passage.title


def with_context(question: str, context: Sequence[Passage]) -> str:
    """The question with retrieved passages before it, numbered as the sources are."""
    if not context:
        return question
    passages = "\n\n".join(f"[{i}] {passage_header(p)}\n{p.text}" for i, p in enumerate(context, 1))
    return f"{CONTEXT_INTRO}\n\n{passages}\n\nQuestion: {question}"


def build_messages(
    question: str, system_prompt: str | None, history: Sequence[Turn] = (), context: Sequence[Passage] = ()
) -> list[dict[str, str]]:
    """The conversation up to `question`; retrieved `context` goes into its turn only."""
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    for turn in history:
        messages += [
            {"role": "user", "content": turn.question},
            {"role": "assistant", "content": turn.answer},
        ]
    messages.append({"role": "user", "content": with_context(question, context)})
    return messages


def unweighted_history(messages: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """A conversation's earlier answers marked with OpenAI's `"weight": 0` (not trained
    on), for a file where each of them is a pair, and trained on, of its own."""
    return [{**m, "weight": 0} if m["role"] == "assistant" else dict(m) for m in messages]


def retrieval_query(questions: Sequence[str]) -> str:
    """What a conversation retrieves for, given its user turns in order: the newest,
    with the words its question frame is answered in, after the one before it. A
    follow-up ("And what about at home?") rarely names its subject, which the turn
    before did; the newest turn comes twice so that what it asks about outweighs the
    earlier subject (BM25 counts a repeated query term twice), and only its own frame
    counts: the "how long" of the turn before pulled the DC fast charging page's
    "minutes" ahead of any page about home."""
    newest = with_answer_words(questions[-1]) if questions else ""
    return " ".join([*questions[-2:-1], newest, newest]) if len(questions) > 1 else newest


def conversation_query(messages: list[dict[str, str]]) -> str:
    """`retrieval_query` of a served conversation."""
    return retrieval_query([m["content"] for m in messages if m["role"] == "user"])


def with_retrieved(messages: list[dict[str, str]], context: Sequence[Passage]) -> list[dict[str, str]]:
    """A served conversation with `context` put into its newest user turn, as
    `build_messages` puts it in training and evaluation."""
    last = max((i for i, m in enumerate(messages) if m["role"] == "user"), default=None)
    if last is None or not context:
        return messages
    return [m | {"content": with_context(m["content"], context)} if i == last else m for i, m in enumerate(messages)]


def with_system_prompt(messages: list[dict[str, str]], system_prompt: str | None) -> list[dict[str, str]]:
    """A served conversation without its own system message gets the trained one."""
    if system_prompt and not any(m["role"] == "system" for m in messages):
        return [{"role": "system", "content": system_prompt}, *messages]
    return messages


# The chat template of a tokenizer that has none (a base model's): ChatML, the format of
# the default base model and of many small instruct models. Set where tokenizers are
# loaded, so training saves it with the model and serving reads it back.
DEFAULT_CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
# Whether a tokenizer's template takes the system role, found once per tokenizer.
_TAKES_SYSTEM: weakref.WeakKeyDictionary[Any, bool] = weakref.WeakKeyDictionary()


def takes_system_role(tokenizer: Any) -> bool:
    if tokenizer not in _TAKES_SYSTEM:
        try:
            tokenizer.apply_chat_template([{"role": "system", "content": "s"}, {"role": "user", "content": "u"}],
                                          tokenize=False, add_generation_prompt=True)
            _TAKES_SYSTEM[tokenizer] = True
        except Exception:  # jinja2's TemplateError from the template's raise_exception, whatever its wording
            _TAKES_SYSTEM[tokenizer] = False
    return _TAKES_SYSTEM[tokenizer]


def fit_template(tokenizer: Any, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The messages as the tokenizer's chat template takes them. A template that
    rejects the system role (Gemma's, some Mistral ones) gets the system prompt at the
    start of the first user turn, a blank line before the question, as those models'
    cards advise; training, evaluation and serving all render through here."""
    if not messages or messages[0]["role"] != "system" or takes_system_role(tokenizer):
        return messages
    system, *rest = messages
    if not rest or rest[0]["role"] != "user":
        raise ValueError("a system message must be followed by a user message for a template without a system role")
    return [rest[0] | {"content": f"{system['content']}\n\n{rest[0]['content']}"}, *rest[1:]]


def render_prompt(tokenizer: Any, messages: list[dict[str, Any]]) -> str:
    """Chat-template text up to where the assistant's answer starts.

    trl builds its prompt/completion training examples with this same call (on rows
    `fit_template` made), so a prompt rendered here is token-for-token the prompt the
    model was trained on.
    """
    return tokenizer.apply_chat_template(fit_template(tokenizer, messages), tokenize=False,
                                         add_generation_prompt=True)


def encode_prompt(tokenizer: Any, messages: list[dict[str, str]]) -> list[int]:
    """Token ids of `render_prompt`, with every message's content tokenized as text.

    Tokenizing the rendered string would turn a user's typed `<|im_end|>` into the
    control token that ends their turn, so they could write the system's turn. Here the
    template's own pieces keep their special tokens and the contents never get any.
    For ordinary text the ids are the ones `tokenizer(render_prompt(...))` gives.
    """
    messages = fit_template(tokenizer, messages)
    marker = f"\x00{secrets.token_hex(8)}\x00"
    marked = [m | {"content": f"{marker}{i}{marker}"} for i, m in enumerate(messages)]
    pieces = render_prompt(tokenizer, marked).split(marker)
    # pieces alternate: template text, a message index, template text, ...
    contents = [messages[int(i)]["content"] for i in pieces[1::2]]
    template = pieces[0::2]
    expected = render_prompt(tokenizer, messages)
    for transform in (lambda c: c, str.strip):  # some templates trim the content
        texts = [transform(c) for c in contents]
        if "".join(t + c for t, c in zip(template, [*texts, ""])) == expected:
            break
    else:
        raise ValueError("the chat template changes message contents in a way qaforge cannot reproduce")
    ids: list[int] = []
    for i, piece in enumerate(template):
        ids += tokenizer(piece, add_special_tokens=False)["input_ids"] if piece else []
        if i < len(texts) and texts[i]:
            ids += tokenizer(texts[i], add_special_tokens=False, split_special_tokens=True)["input_ids"]
    return ids
