"""leanformer.patch: swap memory-lean modules into Hugging Face / PyTorch models in place (``patch_``/``unpatch_``).

Heavy imports (transformers) happen only when ``leanformer.patch.api`` is imported.
"""
