"""Remote control: signed configuration bundles and commands, operator keys, the apply pipeline."""
