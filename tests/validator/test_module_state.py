"""The validator's module-level tables are read-only: state is built in ``main`` and handed in, never kept at
module level, where one caller's change (a test's, a helper's) would leak into every later validator in the
process (``sn1 localnet`` starts its validator from these defaults)."""

from __future__ import annotations

import pytest

from neurons.validator.availability import CLOCK_REFUSALS
from neurons.validator.presets import FAST_ENV
from neurons.validator.readiness import CHECKS, TRIED_BY
from neurons.validator.reference import REFERENCE_SETTINGS
from neurons.validator.tasks import DEFAULT_PROBABILITIES

TABLES = {"DEFAULT_PROBABILITIES": DEFAULT_PROBABILITIES, "FAST_ENV": FAST_ENV, "CHECKS": CHECKS,
          "TRIED_BY": TRIED_BY, "REFERENCE_SETTINGS": REFERENCE_SETTINGS, "CLOCK_REFUSALS": CLOCK_REFUSALS}


@pytest.mark.parametrize("name", sorted(TABLES))
def test_a_module_level_table_cannot_be_changed_by_a_caller(name: str) -> None:
    table = TABLES[name]
    key = next(iter(table))
    with pytest.raises(TypeError):
        table[key] = table[key]  # type: ignore[index]
    with pytest.raises(TypeError):
        table["added"] = table[key]  # type: ignore[index]
