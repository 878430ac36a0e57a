"""Deployment pieces below the engine: graph-level work on exported models (int8 quantization, parity).

Nothing here imports :mod:`rtdet.engine`; the ``rtdet export`` verb in the engine uses these modules.
"""
