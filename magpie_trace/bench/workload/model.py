"""What a workload is made of: conversations of one or more turns, each turn one request."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Prompt:
    """One request's input. `history` is the conversation so far as (role, text) pairs.

    For /v1/chat/completions the request carries `messages()`; for /v1/completions the history
    and this turn joined by newlines (`completion_text()`).
    """

    text: str
    prompt_tokens: int
    output_tokens: int
    history: tuple[tuple[str, str], ...] = ()
    shared_prefix_tokens: int = 0

    def messages(self) -> list[dict[str, str]]:
        return [{"role": role, "content": text} for role, text in self.history] + [
            {"role": "user", "content": self.text}
        ]

    def completion_text(self) -> str:
        if not self.history:
            return self.text
        return "\n".join([*(text for _, text in self.history), self.text])


@dataclass(frozen=True)
class Conversation:
    """User turns sent one after another, each after the reply to the one before.

    `at_s` (trace replay) is when its first turn is due, in seconds after the point starts.
    """

    turns: tuple[Prompt, ...]
    at_s: float | None = None


@dataclass
class Workload:
    conversations: list[Conversation]
    notes: list[str] = field(default_factory=list)  # warnings for result.json
    token_source: str = "words"  # tokenizer | server | words: how prompt lengths were made
