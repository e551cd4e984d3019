"""leanformer.ops."""
