"""docs/reference.md is generated from the component types: it must say what the code does."""

from lakerelay.devtools.reference import REFERENCE, render


def test_the_configuration_reference_is_up_to_date() -> None:
    assert REFERENCE.read_text() == render(), (
        "docs/reference.md is stale: run python -m lakerelay.devtools.reference"
    )
