"""agentqat: discover LLM quantization strategies in a survival tournament."""

import importlib.resources
from importlib.resources.abc import Traversable
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parent.parent  # the repository root when agentqat runs from a checkout


def edited_files(top_level: str, package: str, name: str) -> Traversable:
    """Returns a folder of files people read and edit, kept at the checkout's top level (`arena/`, `prompts/`): the
    copy an installed wheel carries as `package`/`name` (setup.py maps the top-level folder there), else, in a
    checkout or an editable install, the top-level folder itself."""
    packaged = importlib.resources.files(package) / name
    return packaged if packaged.is_dir() else CHECKOUT / top_level
