"""imagectl: build, sign, publish and pull VM guest images."""

__version__ = "0.1.0"
