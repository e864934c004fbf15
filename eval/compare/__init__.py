"""How seedlora compares with PEFT and mergekit: one script per README claim, each printing its figure.

Run `python -m eval.compare.<claim> --inputs sample|7b` (peft_linear, peft_ties, mergekit_ties,
mergekit_extract, speed) or `python -m eval.compare.all`. mergekit runs in its own venv
(eval.compare.mergekit_env), PEFT and seedlora (its CLI and public API) in this environment.
"""
