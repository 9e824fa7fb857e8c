"""Compression stages: palettisation (``palettize``), int8 quantisation (``quantize``) and structured
pruning (``prune``). Each is measured on the user's own held-out images."""
