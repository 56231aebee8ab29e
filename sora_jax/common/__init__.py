"""Low-level pieces shared by training and inference (they import nothing above them)."""
