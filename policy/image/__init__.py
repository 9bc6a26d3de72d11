"""The image module (paper Section 6.2): data, training and sampling (train.py), the U-Net (unet.py), Frechet distances (frechet.py).

The map of the packages and their seams: docs/architecture.md.
"""
