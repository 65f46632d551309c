"""Task names on the wire (the ``task`` field of a chat request), shared by every process."""

from __future__ import annotations

INFERENCE = "InferenceTask"
QUESTION_ANSWERING = "QuestionAnsweringTask"
WEB_RETRIEVAL = "WebRetrievalTask"
ARITHMETIC = "ArithmeticTask"

ALL_TASKS = (INFERENCE, QUESTION_ANSWERING, WEB_RETRIEVAL, ARITHMETIC)

# The prompt shapes the validator's synthetic tasks use (plain language for real LLMs;
# the deterministic test model parses the markers).
CONTEXT_MARKER = "Context:"
QUESTION_MARKER = "Question:"
