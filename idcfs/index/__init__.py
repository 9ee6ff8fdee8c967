"""The index layer: which series a mount shows (selection.py), how they are arranged (layout.py,
naming.py), the tree built once per release (build.py) and mapped (files.py), and lookups over
it (tree.py)."""
