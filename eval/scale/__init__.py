"""The issue-11 scale benchmark (eval/bench_scale.py): synthetic 7B/70B-shaped inputs, floors, references."""
