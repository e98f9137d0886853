"""Prompt rendering with the tokenizer's chat template, and a plain fallback for base models
without one. The fine-tuning code builds its training prompts with these same functions, so an
adapter sees at serving time exactly the format it was trained on."""

from __future__ import annotations

from typing import Any

Message = dict[str, str]


def has_chat_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def render_chat(tokenizer: Any, messages: list[Message], *, add_generation_prompt: bool = True) -> str:
    if has_chat_template(tokenizer):
        return str(tokenizer.apply_chat_template(messages, add_generation_prompt=add_generation_prompt, tokenize=False))
    lines = [f"{m['role'].capitalize()}: {m['content']}" for m in messages]
    if add_generation_prompt:
        lines.append("Assistant:")
    return "\n\n".join(lines)


def default_label_instruction(labels: list[str]) -> str:
    return f"Classify the text. Answer with exactly one word, one of: {', '.join(labels)}."


def classification_prompt(tokenizer: Any, text: str, labels: list[str], instruction: str | None = None) -> str:
    messages = [
        {"role": "system", "content": instruction or default_label_instruction(labels)},
        {"role": "user", "content": text},
    ]
    return render_chat(tokenizer, messages)


def truncate_tokens(tokenizer: Any, text: str, max_tokens: int) -> str:
    ids = tokenizer.encode(text, add_special_tokens=False)
    if len(ids) <= max_tokens:
        return text
    return str(tokenizer.decode(ids[:max_tokens], skip_special_tokens=True)).rstrip() + " …"
