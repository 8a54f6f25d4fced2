"""The .xsp format and nothing above it: streaming safetensors (`safetensors_io`), the
validating reader (`validate`, the one trust boundary), the `container` (XspFile, XspWriter),
safe outputs (`output`), calibration and quality records (`records`) and the dtype names
shared with torch (`torchconv`)."""
