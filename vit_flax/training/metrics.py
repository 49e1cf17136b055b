"""Metrics for machines (WORKDIR/metrics.jsonl, one JSON object per logged step) and for people (TensorBoard)."""

from __future__ import annotations

import json
from pathlib import Path

import jax
# TensorBoard's own writer: tensorboardX imports torch at its import (1.2 s of every trainer process's start-up)
from tensorboard.summary import Writer


class MetricsWriter:
    """Writes from process 0 only. On resume, lines after the restored step are dropped first, so a resumed
    run's file reads as if it had never stopped."""

    def __init__(self, workdir: str | Path, resume_step: int):
        self.enabled = jax.process_index() == 0
        self.path = Path(workdir) / 'metrics.jsonl'
        self.tensorboard = None
        if not self.enabled:
            return
        if self.path.exists():
            kept = [line for line in self.path.read_text().splitlines()
                    if line.strip() and json.loads(line)['step'] <= resume_step]
            self.path.write_text(''.join(line + '\n' for line in kept))
        self.tensorboard = Writer(str(Path(workdir) / 'tensorboard'))

    def write(self, step: int, metrics: dict):
        if not self.enabled:
            return
        record = {'step': int(step), **{key: float(value) for key, value in metrics.items()}}
        with self.path.open('a') as f:
            f.write(json.dumps(record) + '\n')
        for key, value in metrics.items():
            self.tensorboard.add_scalar(key, float(value), step=int(step))

    def close(self):
        if self.tensorboard is not None:
            self.tensorboard.close()


def read_metrics(workdir: str | Path) -> list[dict]:
    path = Path(workdir) / 'metrics.jsonl'
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []
