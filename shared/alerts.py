"""The alert as agencies submit it: BLOnet's own JSON model (CAP 1.2 maps onto it)."""
from __future__ import annotations

import re
from enum import StrEnum
from typing import Annotated
from uuid import UUID

from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field, model_validator

from shared import langtag

# C0 and C1 control characters, DEL and lone surrogates: PostgreSQL refuses NUL in text and
# jsonb, and none of them belongs in an alert. Free text may keep tab, newline and CR.
_CONTROLS = "\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff"
_IN_TEXT = re.compile(f"[{_CONTROLS}]")
_IN_LINE = re.compile(f"[{_CONTROLS}\t\n\r]")


def control_character(value: str, *, free_text: bool = False) -> str | None:
    """Return a description of the first control character in `value` that is not allowed, or None."""
    found = (_IN_TEXT if free_text else _IN_LINE).search(value)
    return f"control character U+{ord(found.group()):04X} is not allowed" if found else None


def _no_controls(free_text: bool):
    def check(value: str) -> str:
        problem = control_character(value, free_text=free_text)
        if problem:
            raise ValueError(problem)
        return value
    return check


Line = Annotated[str, AfterValidator(_no_controls(free_text=False))]  # ids, names, codes: no control characters
Text = Annotated[str, AfterValidator(_no_controls(free_text=True))]  # free text: tab, newline and CR allowed


class Category(StrEnum):
    DRUGS = "drugs"
    PRECURSORS = "precursors"
    WEAPONS = "weapons"
    HUMAN_TRAFFICKING = "human_trafficking"
    SMUGGLED_GOODS = "smuggled_goods"
    WANTED_PERSON = "wanted_person"
    VEHICLE_LOOKOUT = "vehicle_lookout"
    GENERAL_RISK = "general_risk"


class Severity(StrEnum):  # CAP 1.2 values
    EXTREME = "extreme"
    SEVERE = "severe"
    MODERATE = "moderate"
    MINOR = "minor"
    UNKNOWN = "unknown"


class Urgency(StrEnum):
    IMMEDIATE = "immediate"
    EXPECTED = "expected"
    FUTURE = "future"
    PAST = "past"
    UNKNOWN = "unknown"


class Certainty(StrEnum):
    OBSERVED = "observed"
    LIKELY = "likely"
    POSSIBLE = "possible"
    UNLIKELY = "unlikely"
    UNKNOWN = "unknown"


class MsgType(StrEnum):
    ALERT = "alert"
    UPDATE = "update"
    CANCEL = "cancel"


class Status(StrEnum):  # CAP 1.2 <status>
    ACTUAL = "actual"
    EXERCISE = "exercise"
    SYSTEM = "system"
    TEST = "test"
    DRAFT = "draft"


class Translation(BaseModel):
    """The alert's text in another language (CAP: one more <info> block)."""

    model_config = ConfigDict(extra="forbid")
    language: str = Field(pattern=langtag.PATTERN, description="a BCP 47 tag (xs:language), kept as sent")
    headline: Text = Field(min_length=1, max_length=200)
    description: Text = Field("", max_length=20_000)
    instruction: Text | None = Field(None, max_length=4_000)


class Tlp(StrEnum):
    """FIRST TLP 2.0 labels, most restrictive first."""

    RED = "TLP:RED"
    AMBER_STRICT = "TLP:AMBER+STRICT"
    AMBER = "TLP:AMBER"
    GREEN = "TLP:GREEN"
    CLEAR = "TLP:CLEAR"

    @property
    def openness(self) -> int:
        """Return 0 for RED up to 4 for CLEAR: higher may be shared more widely."""
        return _OPENNESS[self]


_OPENNESS = {label: rank for rank, label in enumerate(Tlp)}


class Handling(StrEnum):
    """Europol handling codes."""

    H0 = "H0"  # use only to prevent and combat crime
    H1 = "H1"  # not for judicial proceedings without the provider's permission
    H2 = "H2"  # no dissemination without the provider's permission
    H3 = "H3"  # other restrictions, stated in handling_note


class Direction(BaseModel):
    model_config = ConfigDict(extra="forbid")
    from_country: str = Field(pattern=r"^[A-Z]{2}$")
    to_country: str = Field(pattern=r"^[A-Z]{2}$")


class Location(BaseModel):
    model_config = ConfigDict(extra="forbid")
    post: Line | None = Field(None, description="id of the crossing point the risk concerns")
    border_segment: str | None = Field(None, pattern=r"^[A-Z]{2}-[A-Z]{2}$")
    direction: Direction | None = None


class PersonalData(BaseModel):
    """Redactable fields: removed from views whose agreement forbids personal data."""

    model_config = ConfigDict(extra="forbid")
    names: list[Line] = []
    document_numbers: list[Line] = []
    vehicle_plates: list[Line] = []


class Alert(BaseModel):
    """An alert as submitted; `sender_agency` must match the submitting credential's agency."""

    model_config = ConfigDict(extra="forbid")

    sender_agency: Line = Field(min_length=1, max_length=64)
    sender_post: Line | None = Field(None, max_length=64)
    status: Status = Field(Status.ACTUAL, description="CAP status: exercises and tests are marked as such")
    msg_type: MsgType = MsgType.ALERT
    references: list[UUID] = Field([], description="earlier alerts this one updates or cancels")
    category: Category
    severity: Severity
    urgency: Urgency
    certainty: Certainty
    effective: AwareDatetime | None = None
    expires: AwareDatetime | None = None
    location: Location = Location()
    headline: Text = Field(min_length=1, max_length=200)
    description: Text = Field("", max_length=20_000)
    instruction: Text | None = Field(None, max_length=4_000, description="requested action")
    language: str = Field("ru", pattern=langtag.PATTERN, description="a BCP 47 tag (xs:language), kept as sent")
    translations: list[Translation] = Field([], max_length=8, description="the same text in other languages")
    personal_data: PersonalData | None = None
    addressees: list[Line] = Field([], description="agency or unit ids named explicitly")
    tlp: Tlp = Tlp.AMBER
    handling: list[Handling] = []
    handling_note: Text | None = Field(None, max_length=1_000)
    onward_permission: bool = Field(
        False, description="the originator allows recipients to forward it despite handling code H2"
    )

    @model_validator(mode="after")
    def _check_consistency(self) -> Alert:
        if self.effective and self.expires and self.expires < self.effective:  # equal is valid CAP
            raise ValueError("expires must not be earlier than effective")
        if self.msg_type != MsgType.ALERT and not self.references:
            raise ValueError(f"a {self.msg_type} needs references to the alert it concerns")
        if Handling.H3 in self.handling and not self.handling_note:
            raise ValueError("handling code H3 needs a handling_note")
        return self

