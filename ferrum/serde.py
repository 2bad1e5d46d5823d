"""JSON conversion for the contract dataclasses.

The Rust originals serialise with serde's defaults: struct fields by name, unit enum variants by
their variant name, ``DateTime<Utc>`` as RFC 3339. ``to_json`` reproduces that so a Python
``EngineStatus`` and a Rust one produce the same JSON. Non-finite floats become ``None``: JSON
has no NaN, and a metric that cannot be computed is better absent than invalid.
"""

from __future__ import annotations

import dataclasses
import enum
import math
from datetime import datetime, timezone
from typing import Any


def utc_now() -> datetime:
    """Timezone-aware 'now', the Python twin of ``Utc::now()``."""
    return datetime.now(timezone.utc)


def to_json(value: Any) -> Any:
    """Convert dataclasses, enums, datetimes and containers to JSON-ready values."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_json(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        return value.isoformat().replace("+00:00", "Z")
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): to_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json(v) for v in value]
    return value
