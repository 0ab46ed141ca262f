"""The names of the files in a weights folder: ``weights/<model>.<tag>/``, its Hub repo, a shipped or derived copy.

Imports nothing, so ``setup.py`` reads it at build time without importing gdzoo (or torch).

Example:
    >>> WEIGHTS_FILE, REPO_FILES
    ('model.safetensors', ('config.json', 'model.safetensors', 'README.md'))
"""

__all__ = ["CARD_FILE", "CONFIG_FILE", "REPO_FILES", "WEIGHTS_FILE"]

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
CARD_FILE = "README.md"
# The files a published weights folder (one Hub model repo) holds, and the wheel ships.
REPO_FILES = (CONFIG_FILE, WEIGHTS_FILE, CARD_FILE)
