"""The bottom layer: the bundle file format, the preprocessing contract, pixels and weights. Nothing here imports
another package of pocketvision (errors aside), so every other layer may use it."""
