"""Building blocks of the configuration schema, shared by every section's module.

:mod:`passerelle.config` assembles the whole schema; bus and radio packages define their own
sections beside the code that reads them (``passerelle.modbus.config``...) from these bases,
so a source type is added without touching a central file beyond its registration.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from .model import Priority

# Constrained scalar types. The `hint` in a pattern's Meta replaces msgspec's "matching regex"
# message, which would show the operator a regular expression instead of a rule.
PositiveFloat = Annotated[float, Meta(gt=0)]
PositiveInt = Annotated[int, Meta(gt=0)]
FilePath = Annotated[str, Meta(min_length=1)]
GatewayId = Annotated[
    str,
    Meta(
        pattern=r"^[a-z0-9][a-z0-9-]{0,62}$",
        extra={"hint": "lowercase letters, digits and '-' only (1-63, first a letter or digit)"},
    ),
]
PriorityName = Literal["diagnostic", "telemetry", "energy", "alarm"]


class Section(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """Base of every table: unknown keys are errors, and a loaded config is immutable.

    Subclasses repeat ``frozen=True``: msgspec inherits it, but type checkers do not.
    """


class SourceBase(Section, tag_field="type", frozen=True):
    # `name` and `device` are checked against the SenML name rules in the semantic pass with
    # model.check_name, so the rule lives in one place.
    name: str
    interval: PositiveFloat
    # Poll interval inside [policy].night (None: `interval` day and night). Sources that
    # poll on a schedule (buses) honour it; simulators poll at `interval`.
    night_interval: PositiveFloat | None = None
    priority: PriorityName = "telemetry"
    device: str | None = None

    @property
    def type(self) -> str:
        # The tag is not a Struct field in msgspec; expose it so sources.build_source can
        # dispatch on cfg.type.
        tag = self.__struct_config__.tag
        assert isinstance(tag, str)
        return tag

    @property
    def priority_level(self) -> Priority:
        return Priority[self.priority.upper()]
