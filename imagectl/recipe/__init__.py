"""Recipes: the YAML an image team writes once per image, parsed with positions and validated."""
