"""The first scenario of the May 2017 Dostuk exercise, and what BLOnet must do with it."""
from __future__ import annotations

from datetime import date


def _next_mid_may(today: date) -> int:
    """The exercise's risk window is mid-May: the next one still ahead, so the demo alert is current."""
    return today.year if (today.month, today.day) < (5, 15) else today.year + 1


YEAR = _next_mid_may(date.today())
SCENARIO = {
    "sender_agency": "kg-sbs",
    "sender_post": "bor-dobo",
    "category": "drugs",
    "severity": "severe",
    "urgency": "future",
    "certainty": "likely",
    "effective": f"{YEAR}-05-15T00:00:00+06:00",
    "expires": f"{YEAR}-05-20T23:59:59+06:00",
    "location": {"post": "dostuk", "border_segment": "KG-UZ", "direction": {"from_country": "KG", "to_country": "UZ"}},
    "headline": "Высокий риск наркотрафика из Кыргызстана в Узбекистан через Достук, 15–20 мая",
    "description": "По оперативным данным ПКП Бор-Добо, в середине мая ожидается попытка перемещения "
                   "наркотиков из Кыргызстана в Узбекистан через пункт пропуска Достук.",
    "instruction": "Усилить пограничный контроль на ПП Достук 15–20 мая.",
    "language": "ru",
    "tlp": "TLP:GREEN",
    "handling": ["H0"],
}

# (agency, unit, endpoint, expected): the foundation issue's table, exactly.
EXPECTED_RECIPIENTS = {
    "ep-blo-dostuk": ("kg-sbs", "blo-dostuk", "full"),
    "ep-kg-moi-dostuk": ("kg-moi", "kg-moi-dostuk", "full"),
    "ep-kg-customs-dostuk": ("kg-customs", "kg-customs-dostuk", "full"),
    "ep-uz-sbs-dustlik": ("uz-sbs", "uz-sbs-dustlik", "full"),
    "ep-kg-gknb-bgs": ("kg-gknb-bgs", None, "summary"),
    "ep-kz-mof": ("kz-mof", None, "summary"),
    "ep-unodc": ("unodc", None, "summary"),
}
EXPECTED_DENIED = {("tj-bs", "tj-bs-kyzyl-art"): "not_on_route"}

# The natural second case: customs at Dostuk stop precursor chemicals bound for Uzbekistan.
PRECURSORS = {
    "sender_agency": "kg-customs",
    "sender_post": "dostuk",
    "category": "precursors",
    "severity": "severe",
    "urgency": "immediate",
    "certainty": "observed",
    "location": {"post": "dostuk", "border_segment": "KG-UZ", "direction": {"from_country": "KG", "to_country": "UZ"}},
    "headline": "Задержан груз уксусного ангидрида (прекурсор), направлявшийся в Узбекистан",
    "description": "Грузовик с 2 т уксусного ангидрида без разрешительных документов задержан на ПП Достук.",
    "instruction": "Проверить связанные грузы на ПП Дустлик.",
    "personal_data": {"names": ["Driver A."], "vehicle_plates": ["01 KG 777 AAA"]},
    "tlp": "TLP:AMBER",
}

# BLO Dostuk passes the first scenario on to the units at another crossing (the exercise's step 3).
FORWARD_TO = ["kg-sbs-kyzyl-kiya", "kg-moi-kyzyl-kiya", "kg-customs-kyzyl-kiya"]
