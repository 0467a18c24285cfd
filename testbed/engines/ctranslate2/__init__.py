"""CTranslate2 engine: the same checkpoint converted to CTranslate2 (the peer users would pick)."""
