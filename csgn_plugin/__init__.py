"""csgn-reid: clothes-changing person re-identification for torchreid, with CSGN.

Importing the package registers its datasets and models with torchreid. A trained model comes
back from its checkpoint alone with :func:`load_model` / :func:`load_extractor`.
"""

from .inference import load_extractor, load_model
from .registry import register

__version__ = "0.1.0"
__all__ = ["load_extractor", "load_model", "register", "__version__"]

register()
