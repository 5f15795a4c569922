"""csgn-reid: clothes-changing person re-identification for torchreid, with CSGN.

Importing the package registers its datasets and models with torchreid.
"""

from .registry import register

__version__ = "0.1.0"
__all__ = ["register", "__version__"]

register()
