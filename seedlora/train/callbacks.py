"""TrainerCallbacks: per-sample losses kept across checkpoints, epoch checkpoints, progress.

- `SampleLosses` holds each training row's loss as computed in its last training step (the
  trainer fills it from the step's own logits: no extra forward pass) and saves/loads it with
  every checkpoint, one file per process, so a resumed run ends with the same records.
- `EpochEnd` asks for a checkpoint at every epoch end and, with `save_every_epoch`, keeps the
  adapter of each epoch.
- `Progress` shows a tqdm bar on a terminal, or, in logs, one line every N steps with loss,
  learning rate, step time and ETA; and a summary line when a seed finishes.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

from transformers import TrainerCallback


class SampleLosses(TrainerCallback):
    """Row index -> (summed token loss, scored tokens, optimizer step) of its latest training step."""

    def __init__(self, rank: int = 0):
        self.rank, self.records = rank, {}

    def add(self, index, total, count, step: int) -> None:
        for i, t, c in zip(index.tolist(), total.tolist(), count.tolist()):
            self.records[int(i)] = (float(t), int(c), step)

    def file(self, checkpoint: str | Path) -> Path:
        return Path(checkpoint) / f"sample_losses-{self.rank}.json"

    def load(self, checkpoint: str | Path) -> None:
        path = self.file(checkpoint)
        if path.is_file():
            self.records = {int(k): tuple(v) for k, v in json.loads(path.read_text()).items()}

    def on_save(self, args, state, control, **kwargs):
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if folder.is_dir():
            self.file(folder).write_text(json.dumps(self.records))

    def gathered(self) -> dict[int, tuple]:
        """Every process's records (one process: its own)."""
        from accelerate.utils import gather_object

        from accelerate import PartialState

        if PartialState().num_processes == 1:
            return dict(self.records)
        merged = {}
        for index, record in gather_object(list(self.records.items())):
            if int(index) not in merged or record[2] > merged[int(index)][2]:  # the latest step wins
                merged[int(index)] = tuple(record)
        return merged


class EpochEnd(TrainerCallback):
    """A checkpoint at every epoch end; the epoch's adapter too when `keep_adapters` is set."""

    def __init__(self, folder: Path, keep_adapters: bool):
        self.folder, self.keep_adapters = folder, keep_adapters

    def on_epoch_end(self, args, state, control, model=None, **kwargs):
        control.should_save = True
        if self.keep_adapters and state.is_world_process_zero and model is not None:
            model.save_pretrained(str(self.folder / f"epoch-{round(state.epoch)}"))
        return control


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


class Progress(TrainerCallback):
    """A tqdm bar (`mode` 'bar') or plain lines every `every` steps (`mode` 'lines'), main process only."""

    def __init__(self, seed: int, mode: str, every: int = 10, stream=None):
        self.seed, self.mode, self.every, self.stream = seed, mode, max(1, every), stream
        self.bar, self.started, self.mark, self.last = None, 0.0, (0, 0.0), {}

    def _print(self, text: str) -> None:
        print(text, file=self.stream or sys.stdout, flush=True)

    def on_train_begin(self, args, state, control, **kwargs):
        self.started = time.perf_counter()
        self.mark = (state.global_step, self.started)
        if self.mode == "bar" and state.is_world_process_zero:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=state.max_steps, initial=state.global_step, desc=f"seed {self.seed}")
        elif self.mode == "lines" and state.is_world_process_zero:
            resumed = f", resuming at step {state.global_step}" if state.global_step else ""
            self._print(f"seed {self.seed}: training {state.max_steps} steps ({math.ceil(state.num_train_epochs)} epochs){resumed}")

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = logs or {}
        if "loss" in logs:
            self.last = {**self.last, "loss": logs["loss"], "lr": logs.get("learning_rate", math.nan)}
        if "eval_loss" in logs:
            self.last["eval_loss"] = logs["eval_loss"]
        if not state.is_world_process_zero or "loss" not in logs:
            return
        if self.bar is not None:
            self.bar.update(state.global_step - self.bar.n)
            self.bar.set_postfix(loss=f"{logs['loss']:.4f}")
        elif self.mode == "lines" and (state.global_step % self.every == 0 or state.global_step == state.max_steps):
            now, (step0, time0) = time.perf_counter(), self.mark
            per_step = (now - time0) / max(1, state.global_step - step0)
            eta = per_step * (state.max_steps - state.global_step)
            self._print(f"seed {self.seed} step {state.global_step}/{state.max_steps} epoch {state.epoch:.2f} "
                        f"loss {logs['loss']:.4f} lr {self.last['lr']:.3g} {per_step:.2f} s/step ETA {_duration(eta)}")
            self.mark = (state.global_step, now)

    def on_train_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.close()
        if not state.is_world_process_zero or self.mode is None:
            return
        held = f", eval loss {self.last['eval_loss']:.4f}" if "eval_loss" in self.last else ""
        loss = self.last.get("loss", math.nan)
        self._print(f"seed {self.seed} done: {state.global_step} steps in {_duration(time.perf_counter() - self.started)}, "
                    f"last train loss {loss:.4f}{held}")
