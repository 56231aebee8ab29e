"""Language side: tokenizers and text encoders."""
