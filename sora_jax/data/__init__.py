"""Input data: the built-in moving-shapes set, video files, patch-n'-pack."""
