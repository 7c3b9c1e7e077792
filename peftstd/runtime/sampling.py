"""One generated sequence: its decoding settings (greedy or temperature/top-p sampling, seeded), how it stops (end
of turn, stop strings, a token budget) and its text as it grows, held back where a stop string may be starting or
a character is still incomplete, so a stream never shows text that the finished answer would not.

Sampling runs per row with the row's own generator: the same request with the same seed gives the same text,
whatever else shares its batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class Sampling:
    max_tokens: int
    temperature: float = 1.0  # 0: greedy
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False  # generate past the end-of-turn token, up to max_tokens (vLLM's benchmark switch)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def next_token(logits: torch.Tensor, sampling: Sampling, generator: torch.Generator | None) -> int:
    """The next token of one row: the argmax, or a draw from the temperature-scaled distribution cut to its
    smallest set of tokens whose probability reaches `top_p` (nucleus sampling, as transformers' TopPLogitsWarper)."""
    if sampling.greedy:
        return int(logits.argmax())
    probabilities = torch.softmax(logits.double() / sampling.temperature, dim=-1)
    if sampling.top_p < 1.0:
        ordered, order = probabilities.sort(descending=True)
        keep = ordered.cumsum(0) - ordered < sampling.top_p  # a token stays while the mass before it is under top_p
        probabilities = torch.zeros_like(probabilities).scatter_(0, order[keep], ordered[keep])
    return int(torch.multinomial(probabilities, 1, generator=generator))


@dataclass
class Sequence:
    """A request's generation: prompt ids, new ids, and the text released so far."""

    prompt: list[int]
    sampling: Sampling
    tokenizer: object
    end_ids: frozenset[int]
    adapter: str | None = None
    tokens: list[int] = field(default_factory=list)  # the text's ids (an end-of-turn token is not text)
    generated: int = 0  # tokens the model produced, the end-of-turn token included (OpenAI's completion_tokens)
    released: int = 0  # characters of the text already handed out
    finish_reason: str | None = None  # "stop" or "length" once finished
    text: str = ""

    def __post_init__(self):
        self.generator = None
        if not self.sampling.greedy:
            self.generator = torch.Generator()
            self.generator.manual_seed(self.sampling.seed if self.sampling.seed is not None else torch.seed())

    def choose(self, logits: torch.Tensor) -> int:
        return next_token(logits, self.sampling, self.generator)

    def add(self, token: int) -> str:
        """Take one generated token; the new text that may be released (possibly ''), and `finish_reason` set when
        the sequence ended (end-of-turn token, a stop string, or the token budget)."""
        self.generated += 1
        if token in self.end_ids and not self.sampling.ignore_eos:
            self.finish_reason = "stop"
            return self.release(final=True)
        self.tokens.append(token)
        self.text = self.tokenizer.decode(self.tokens, skip_special_tokens=True)
        for stop in self.sampling.stop:
            at = self.text.find(stop, max(0, self.released - len(stop)))
            if at >= 0:
                self.text, self.finish_reason = self.text[:at], "stop"
                return self.release(final=True)
        if len(self.tokens) >= self.sampling.max_tokens:
            self.finish_reason = "length"
            return self.release(final=True)
        return self.release(final=False)

    def release(self, final: bool) -> str:
        """The text after what was released, up to what may still change: a trailing replacement character (a
        multi-byte character split over tokens) or a tail that begins a stop string."""
        end = len(self.text)
        if not final:
            if self.text.endswith("\ufffd"):
                end -= 1
            held = max((size for stop in self.sampling.stop for size in range(1, min(len(stop), end + 1))
                        if self.text[end - size : end] == stop[:size]), default=0)
            end -= held
        piece = self.text[self.released : max(end, self.released)]
        self.released = max(end, self.released)
        return piece

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None
