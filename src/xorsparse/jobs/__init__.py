"""Whole jobs over checkpoints and folders: the work items (`tasks`), the executors that run
them (`executors`: a local process pool, Ray), model folders in and out (`folder`) and the
compress / decompress entry points for any checkpoint (`checkpoint`)."""
