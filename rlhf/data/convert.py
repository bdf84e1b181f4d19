"""TRL's dataset formats, standard and conversational, read as this project's records.

A *prompt* is a string (standard) or a list of ``{"role", "content"}`` messages
(conversational); it is rendered by ``rlhf.models.tokenizer.prompt_ids``, the one rendering
path. A *completion* is always the assistant's text: a conversational completion must be one
assistant message, and is read as its content.

Which format a record is in follows from its keys (``data.columns`` renames them first):

    ranked:        prompt, completions, ranking          (this project's K-way comparisons)
    preference:    prompt, chosen, rejected               (K = 2, chosen first)
    implicit:      chosen, rejected                       (the shared beginning is the prompt)
    demonstration: prompt, completion
    conversation:  messages                               (prompt = all before the last assistant turn)
    text:          text
    prompt-only:   prompt

Each stage takes what it can use from any format that holds it: SFT the best-ranked (or the
only) completion, or a whole ``text``; RL and evaluation the prompt; the RM needs a ranking.
"""
from __future__ import annotations

import json
from typing import Any

def check_messages(value: Any, key: str) -> str | None:
    """What is wrong with ``value`` as a list of chat messages, else None."""
    if not isinstance(value, list) or not value:
        return f"{key!r} must be a non-empty list of messages"
    for i, m in enumerate(value):
        if not isinstance(m, dict) or not {"role", "content"} <= m.keys():
            return f"{key!r} message {i} must be an object with 'role' and 'content'"
        if not isinstance(m["role"], str) or not m["role"]:  # any role its chat template knows
            return f"{key!r} message {i}: 'role' must be a non-empty string"
        if not isinstance(m["content"], str):
            return f"{key!r} message {i}: 'content' must be a string, got {type(m['content']).__name__}"
    return None


def clean_messages(messages: list[dict]) -> list[dict]:
    """Only role and content: other columns (e.g. arrow's nulls for absent keys) do not reach templates."""
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def check_prompt(rec: dict, key: str = "prompt") -> str | None:
    """A non-empty string or message list at ``rec[key]`` (messages are cleaned in place)."""
    if key not in rec:
        return f"missing key {key!r}"
    value = rec[key]
    if isinstance(value, list):
        if err := check_messages(value, key):
            return err
        rec[key] = clean_messages(value)
        return None
    if not isinstance(value, str):
        return f"{key!r} must be a string or a list of messages, got {type(value).__name__}"
    return None if value.strip() else f"{key!r} is empty"


def completion_text(value: Any, what: str) -> tuple[str | None, str | None]:
    """(text, None) of a completion given as a string or as one assistant message, else (None, why)."""
    if isinstance(value, list):
        if err := check_messages(value, what):
            return None, err
        if len(value) != 1 or value[0]["role"] != "assistant":
            roles = [m["role"] for m in value]
            return None, f"{what!r} must be one assistant message, got roles {roles}"
        value = value[0]["content"]
    if not isinstance(value, str):
        return None, f"{what!r} must be a string or one assistant message, got {type(value).__name__}"
    return (value, None) if value.strip() else (None, f"{what!r} is empty")


def split_conversation(rec: dict, key: str = "messages") -> str | None:
    """``messages`` -> ``prompt`` (all before the last assistant turn) + ``completion`` (its text)."""
    if err := check_messages(rec.get(key), key):
        return err
    messages = clean_messages(rec.pop(key))
    last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=None)
    if last is None or last == 0:
        return f"{key!r} needs a turn before an assistant turn (roles {[m['role'] for m in messages]})"
    rec["prompt"], rec["completion"] = messages[:last], messages[last]["content"]
    return None if rec["completion"].strip() else f"{key!r}: the last assistant turn is empty"


def _word_start(a: str, b: str) -> int:
    """Length of a and b's common beginning, backed off to a whitespace so no word is split."""
    n, shortest = 0, min(len(a), len(b))
    while n < shortest and a[n] == b[n]:
        n += 1
    at_boundary = n < shortest and (a[n].isspace() or b[n].isspace() or a[n - 1:n].isspace())
    if n and not at_boundary:  # mid-word, or one text is the other's beginning
        n = max(a.rfind(" ", 0, n), a.rfind("\n", 0, n)) + 1  # 0 when no whitespace: no prompt
    return n


def extract_prompt(rec: dict) -> str | None:
    """Implicit prompt: ``chosen`` and ``rejected`` become the shared beginning (``prompt``) and
    what follows it. Strings split at a word boundary, message lists after the last shared
    message (what follows must then be one assistant message)."""
    chosen, rejected = rec["chosen"], rec["rejected"]
    if isinstance(chosen, list) and isinstance(rejected, list):
        for key in ("chosen", "rejected"):
            if err := check_messages(rec[key], key):
                return err
        n = 0
        while n < min(len(chosen), len(rejected)) and clean_messages([chosen[n]]) == clean_messages([rejected[n]]):
            n += 1
        if n == 0:
            return "'chosen' and 'rejected' share no first message, so no prompt can be extracted (add a 'prompt')"
        if n == len(chosen) == len(rejected):
            return "'chosen' and 'rejected' are the same conversation"
        if short := [k for k, v in (("chosen", chosen), ("rejected", rejected)) if len(v) == n]:
            return f"{short[0]!r} ends where the shared prompt ends: no answer follows it"
        rec["prompt"], rec["chosen"], rec["rejected"] = clean_messages(chosen[:n]), chosen[n:], rejected[n:]
        return None
    if isinstance(chosen, str) and isinstance(rejected, str):
        n = _word_start(chosen, rejected)
        if not chosen[:n].strip():
            return "'chosen' and 'rejected' share no beginning, so no prompt can be extracted (add a 'prompt')"
        rec["prompt"], rec["chosen"], rec["rejected"] = chosen[:n].strip(), chosen[n:].strip(), rejected[n:].strip()
        return None
    return "'chosen' and 'rejected' must both be strings or both message lists"


def conversations_hold_prompt(rec: dict) -> None:
    """``chosen`` and ``rejected`` given as whole conversations beside a ``prompt`` column (as in
    UltraFeedback binarized): a string prompt is then read from the conversations instead (as TRL
    does); a message-list prompt they begin with is cut from their start."""
    chosen, rejected, prompt = rec.get("chosen"), rec.get("rejected"), rec.get("prompt")
    if check_messages(chosen, "chosen") or check_messages(rejected, "rejected"):
        return  # not two conversations: the checks that follow say what is wrong
    if isinstance(prompt, str) and any(m["role"] != "assistant" for m in chosen + rejected):
        del rec["prompt"]  # extract_prompt finds it in the conversations
    elif isinstance(prompt, list) and not check_messages(prompt, "prompt"):
        n = len(prompt)
        for key in ("chosen", "rejected"):
            if len(rec[key]) > n and clean_messages(rec[key][:n]) == clean_messages(prompt):
                rec[key] = rec[key][n:]


def best_completion(rec: dict) -> None:
    """A checked comparison -> a demonstration of its best-ranked completion."""
    best = rec["completions"][rec["ranking"][0]]
    del rec["completions"], rec["ranking"]
    rec["completion"] = best


def plain_text(value: str | list[dict]) -> str:
    """A string, or a conversation's contents joined: text to train a from-scratch tokenizer on."""
    return value if isinstance(value, str) else "\n".join(m["content"] for m in value)


def as_messages(prompt: str | list[dict]) -> list[dict]:
    """A prompt as chat messages: a string is one user turn."""
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt


def prompt_key(prompt: str | list[dict]) -> str:
    """A hashable key of a prompt (a conversation as its JSON)."""
    return prompt if isinstance(prompt, str) else json.dumps(prompt, ensure_ascii=False, sort_keys=True)
