"""Checkpoints as people have them, and one shard at a time: reading (`readers`), model
folders' layout (`folder`), compressed-tensors in and out (`compressed_tensors`), which tensors
are compressed (`selection`), what every shard shares (`planning`), one input shard to one .xsp
file (`shard`), statistics and sizes (`stats`), .xsp files read back (`xspset`, `dense`),
`inspect` and `verify`."""
