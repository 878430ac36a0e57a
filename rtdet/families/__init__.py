"""Model families: one record each (heads, criterion, recipe, demo settings, pipelines, converters).

The built-in families register themselves here; a family outside the package calls
:func:`register_family` with its own record (docs/families.md).
"""

from rtdet.families.dfine import DFINE
from rtdet.families.record import (
    Family,
    FamilyError,
    criterion_for,
    families,
    family_of,
    get_family,
    register_family,
    unregister_family,
)
from rtdet.families.rtdetr import RTDETR
from rtdet.families.rtmdet import RTMDET
from rtdet.families.yolov9 import YOLOV9

__all__ = ["DFINE", "RTDETR", "RTMDET", "YOLOV9", "Family", "FamilyError", "criterion_for", "families", "family_of",
           "get_family", "register_family", "unregister_family"]
