"""``python -m rtdet <verb> key=value ...`` runs the command line (same as the ``rtdet`` script)."""

from rtdet.cli import entrypoint

if __name__ == "__main__":
    entrypoint()
