"""imagectl: build, sign, publish and pull VM guest images."""

from imagectl import _imports

__version__ = "0.1.0"

_imports.install()
