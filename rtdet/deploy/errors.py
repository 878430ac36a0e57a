"""The one error of the deploy layer."""

__all__ = ["ExportError"]


class ExportError(RuntimeError):
    """A model that cannot be exported, an export that ONNX Runtime does not reproduce, or a file that is not
    an rtdet export (or was damaged): the message names the file, the key or operation, and the fix."""
