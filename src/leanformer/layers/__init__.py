"""leanformer.layers."""
