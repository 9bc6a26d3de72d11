"""The LIBERO policy (paper Section 6.3): config.py (validated config), network.py (encoder + denoiser + loss), policy.py (DiffusionPolicy: predict, save/load), normalize.py, and its nets: resnet.py, language.py (BERT), denoiser.py.

The map of the packages and their seams: docs/architecture.md.
"""
