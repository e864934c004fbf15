"""Chat templates: which one applies, and a conversation cut into scored and unscored text.

`--chat-template auto` applies the tokenizer's own template to `messages` data and none to
prompt/completion or text data; `tokenizer` applies it to prompt/completion rows too, as a
user turn and an assistant turn (an instruct model fine-tuned on a CSV); `none` applies none
(then messages data are refused: they have no other text form); a PATH is a Jinja file used
instead of the tokenizer's template, for messages and prompt/completion rows alike.

Loss is taken on assistant turns only. The conversation is rendered once per assistant turn
(the turns before it with the generation prompt, then including it), so each assistant turn's
text, end-of-turn marker included, is exactly the difference of two renderings; training and
evaluation tokenise the same pieces, so they see the same token ids.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import SeedLoraError

CHOICES = ("auto", "tokenizer", "none")


def resolve_template(tokenizer, choice: str, mode: str, source: str) -> str | None:
    """The Jinja template to apply to rows of `mode` (messages/completion/text), or None."""
    if choice == "none":
        if mode == "messages":
            raise SeedLoraError(f"{source} holds chat messages but --chat-template none; "
                                "pass --chat-template auto (the tokenizer's) or a template file")
        return None
    if choice in ("auto", "tokenizer"):
        if mode == "text" or (choice == "auto" and mode != "messages"):
            return None
        template = getattr(tokenizer, "chat_template", None)
        if not template:
            raise SeedLoraError(f"--chat-template {choice}: the tokenizer has no chat template to apply to {source}; "
                                "pass --chat-template PATH (a Jinja file)")
        return template
    path = Path(choice)
    if not path.is_file():
        raise SeedLoraError(f"chat template {choice} is not a file; pass auto, none or a Jinja file (--chat-template)")
    if mode == "text":
        raise SeedLoraError(f"a chat template applies to messages or prompt/completion rows, not to text rows of "
                            f"{source}; drop --chat-template or --text-field")
    return path.read_text()


def check_messages(messages, where: str) -> list[dict]:
    """The row's messages as [{'role', 'content'}], with at least one assistant turn."""
    if not isinstance(messages, (list, tuple)) or not messages:
        raise SeedLoraError(f"{where}: messages must be a non-empty list of {{role, content}}; fix the data")
    out = []
    for message in messages:
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            raise SeedLoraError(f"{where}: every message needs 'role' and 'content' (got {message!r}); fix the data")
        out.append({"role": str(message["role"]), "content": str(message["content"])})
    if not any(m["role"] == "assistant" for m in out):
        raise SeedLoraError(f"{where}: no assistant message, so nothing to learn or score; fix the data")
    return out


def _render(tokenizer, template: str, messages: list[dict], generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(
        messages, chat_template=template, tokenize=False, add_generation_prompt=generation_prompt
    )


def segments(tokenizer, template: str, messages: list[dict], where: str) -> list[tuple[str, bool]]:
    """The rendered conversation as (text, is_assistant_turn) pieces whose join is the whole."""
    pieces, done = [], ""
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        start = _render(tokenizer, template, messages[:i], True)
        end = _render(tokenizer, template, messages[: i + 1], False)
        if not start.startswith(done) or not end.startswith(start):
            raise SeedLoraError(f"{where}: the chat template does not render turn by turn (an earlier rendering is "
                                "not a prefix of a later one); use a template that appends turns")
        pieces += [(start[len(done):], False), (end[len(start):], True)]
        done = end
    whole = _render(tokenizer, template, messages, False)
    if not whole.startswith(done):
        raise SeedLoraError(f"{where}: the chat template does not render turn by turn; use a template that appends turns")
    if len(whole) > len(done):
        pieces.append((whole[len(done):], False))
    return [(text, scored) for text, scored in pieces if text]
