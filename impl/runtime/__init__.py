"""The compute core: Llama-family layer-range segments of Hugging Face checkpoints.

``config`` reads config.json, ``loader`` opens only the safetensors a range needs, ``model`` is the
decoder slice, ``segment`` adds per-session KV caches, ``generate`` is un-split reference generation,
``tensors`` the spec's canonical tensor bytes, ``tokenizer`` and ``checkpoint`` (seeded random models).
May import ``verisplit.spec`` only, never another ``impl`` subpackage.
"""
