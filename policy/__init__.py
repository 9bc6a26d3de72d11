"""Everything that learns or samples: the loss core (scoring.py), the sampler (diffusion.py), and the 2D, image and LIBERO-policy modules with their training and serving. Never imports the simulator or ``envs``.

The map of the packages and their seams: docs/architecture.md."""
