"""Data shipped with xorsparse: the built-in English calibration and held-out corpus
(see README.md here and docs/CALIBRATION.md; read through xorsparse.data.calibdata)."""
