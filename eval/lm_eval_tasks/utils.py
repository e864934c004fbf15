"""Scoring functions for the seedlora lm-evaluation-harness tasks (loaded by lm_eval from this folder).

Self-contained (lm_eval imports this file by path): `parse_answer` is the rule eval/evaluate.py
uses, written again here; tests/test_lm_eval.py checks the two agree on the same items.
"""

import re

NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def parse_answer(text: str) -> str:
    """The first number in `text` (commas dropped, trailing .0 removed), else the stripped text."""
    found = NUMBER.search(text)
    if found is None:
        return text.strip()
    value = found.group(0).replace(",", "")
    if "." in value:
        value = value.rstrip("0").rstrip(".")
    return value if value not in ("-0", "") else "0"


def gsm_exact_match(doc: dict, results: list) -> dict:
    """1.0 when the generated answer's first number equals the reference completion's."""
    answer = results[0].split("\n")[0]
    return {"exact_match": float(parse_answer(answer) == parse_answer(str(doc["completion"])))}


def completion_nll(doc: dict, results: list) -> dict:
    """−log p(completion | prompt), summed over the completion's tokens."""
    loglikelihood, _ = results[0]
    return {"nll": -float(loglikelihood)}
