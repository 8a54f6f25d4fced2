"""Resume of a calibrated model-folder job without running the model.

A rerun of `xorsparse compress MODEL_DIR OUT_DIR` into a folder whose output shards are all
done would otherwise calibrate again (minutes) only to find every shard already written. The
job key of a shard (docs/FORMAT.md 7.4) covers the calibration record, which is known only
after calibration; but the shards carry that record, so the key can be checked with it
before any model work, provided the record asks for the same calibration as this run (same
method, data, sample subset, seed, batch shape, recovery and torch). Then the job is done and
the records are the first run's; otherwise the model runs as usual.

The same check finds, before any work, output shards of another job in the way (refused
without --force, as the writer would refuse them after the calibration).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch

from ..checkpoint.options import SelectOptions
from ..checkpoint.readers import open_checkpoint
from ..checkpoint.selection import select_tensors
from ..jobs.folder import check_prepared_job
from ..jobs.tasks import JobError
from ..tensor.pipeline import CompressConfig
from .folder import BATCH_SIZE, MAX_LENGTH, CalibrationOptions, calibration_set
from .recover import LR, SCALE_LR


class KeptShards(Mapping):
    """`prepared` for a job whose output shards are all kept: the names, no values. A shard
    that must be written after all (changed since the check) fails with a one-line error."""

    def __init__(self, names: Sequence[str], out: str):
        self._names = list(names)
        self._out = out

    def __getitem__(self, name: str) -> Any:
        if name not in self._names:
            raise KeyError(name)
        raise JobError(f"{self._out}: an output shard changed while the job was resuming; run the command again")

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)


def asks_for_the_same(record: Mapping[str, Any] | None, config: CompressConfig, *, calibration: str | None,
                      samples: int | None, seed: int, recover_steps: int) -> bool:
    """Whether a shard's calibration record was made from what this run would calibrate with."""
    if not isinstance(record, Mapping):
        return False
    info = calibration_set(calibration, samples, seed).info
    want: dict[str, Any] = {k: info[k] for k in ("source", "file", "sha256", "samples", "held_out", "selection")}
    want.update(method=config.method, seed=seed, max_length=MAX_LENGTH, batch_size=BATCH_SIZE,
                torch=torch.__version__)
    if recover_steps:
        want.update(recover_steps=recover_steps, recover_lr=LR, recover_scale_lr=SCALE_LR, recover_seed=seed)
    elif record.get("recover_steps"):
        return False
    return all(record.get(k) == v for k, v in want.items())


def finished_folder_job(src: str, out: str, config: CompressConfig, select: SelectOptions = SelectOptions(),
                        calib: CalibrationOptions = CalibrationOptions(), *, force: bool = False) -> dict | None:
    """The records of `out` when its job (this folder, config and calibration) is complete: the
    caller then compresses with KeptShards and these records, and no model runs. None when
    there is work to do. A shard of another job in the way raises JobError unless `force`."""
    selected = select_tensors(open_checkpoint(src), select.include, select.exclude, select.force_include,
                              select.embeddings).compressed
    check = check_prepared_job(src, out, config, selected, select)
    if not (check.records or {}).get("calibration"):
        # no output shard yet, or shards written without a model run (data-free, or a folder
        # the model of which could not be built): the writer decides, as it always did
        return None
    why = check.why
    if check.state != "other" and not asks_for_the_same((check.records or {}).get("calibration"), config,
                                                         calibration=calib.calibration, samples=calib.samples,
                                                         seed=calib.seed, recover_steps=calib.recover_steps):
        why = f"{out}: its shards were calibrated with other data or settings (another job)"
    if why:
        if force:
            return None
        raise JobError(f"{why}; refusing to replace it (--force redoes it)")
    return check.records if check.state == "done" else None


__all__ = ["KeptShards", "asks_for_the_same", "finished_folder_job"]
