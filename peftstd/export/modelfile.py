"""An Ollama Modelfile beside the GGUF files: FROM the file, TEMPLATE from the model's chat template, a stop
parameter per end-of-turn token.

Ollama's templates are Go templates over `.System`, `.Prompt` and `.Response`; chat templates are Jinja. No
library translates one into the other, so the Go template is derived here: the Jinja template is rendered with
marker strings, and Ollama's variables go where the markers land. That holds for templates that print a
message's content as it is, which chat templates do (the tests fill the result back and compare it with the
Jinja rendering).
"""

from __future__ import annotations

SYSTEM, PROMPT, RESPONSE = "\x1esystem\x1e", "\x1eprompt\x1e", "\x1eresponse\x1e"
GO = {SYSTEM: "{{ .System }}", PROMPT: "{{ .Prompt }}", RESPONSE: "{{ .Response }}"}


def go_template(tokenizer) -> str | None:
    """The chat template as an Ollama TEMPLATE, or None when the tokenizer has none."""
    if not tokenizer.chat_template:
        return None

    def render(messages: list[dict], generation: bool) -> str:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation)

    user = {"role": "user", "content": PROMPT}
    with_system = render([{"role": "system", "content": SYSTEM}, user], True)
    without = render([user], True)
    answered = render([user, {"role": "assistant", "content": RESPONSE}], False)
    closing = answered.split(RESPONSE, 1)[1] if RESPONSE in answered else ""
    if any("{{" in part for part in (with_system, without, closing)):
        raise ValueError("the chat template prints '{{', which an Ollama template cannot hold as text")

    def go(text: str) -> str:
        for marker, variable in GO.items():
            text = text.replace(marker, variable)
        return text

    if SYSTEM not in with_system:  # the template ignores system messages
        return go(without) + GO[RESPONSE] + go(closing)
    return f"{{{{ if .System }}}}{go(with_system)}{{{{ else }}}}{go(without)}{{{{ end }}}}{GO[RESPONSE]}{go(closing)}"


def modelfile(gguf_file: str, tokenizer, end_ids: frozenset[int], others: list[str]) -> str:
    """The Modelfile text for `gguf_file` (relative to the export folder); `others` are the other gated files."""
    lines = ["# Ollama: ollama create NAME -f Modelfile && ollama run NAME", f"# Other gated GGUF files here: {', '.join(others)}"
             if others else "", f"FROM ./{gguf_file}"]
    template = go_template(tokenizer)
    if template is not None:
        lines.append(f'TEMPLATE """{template}"""')
    for token in sorted(tokenizer.convert_ids_to_tokens(sorted(end_ids))):
        lines.append(f'PARAMETER stop "{token}"')
    return "\n".join(line for line in lines if line) + "\n"
