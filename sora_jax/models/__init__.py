"""Neural networks: the causal video VAE and the Diffusion Transformer."""
