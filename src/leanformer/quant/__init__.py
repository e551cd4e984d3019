"""leanformer.quant."""
