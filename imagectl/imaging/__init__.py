"""Building images: diskimage-builder runs, host compatibility, and the boot test."""
