"""Low-level pieces shared by every layer (they import nothing above them): checkpoint
layout and restore, config check primitives."""
