"""The dead-letter rate check of each sink asset: declared on the post asset, evaluated by its op.

The op knows the counts when it has posted, so it returns the check's result with the
materialization; a run with nothing to post returns a passing result that says so.
"""

import dagster as dg

DEAD_LETTER_CHECK = "dead_letter_rate"


def dead_letter_check_spec(asset_key: dg.AssetKey) -> dg.AssetCheckSpec:
    return dg.AssetCheckSpec(
        DEAD_LETTER_CHECK,
        asset=asset_key,
        description="Warns when a post run dead-lettered more than dead_letter_max_rate of its records.",
    )


def dead_letter_result(dead_lettered: int, records: int, max_rate: float) -> dg.AssetCheckResult:
    rate = dead_lettered / records if records else 0.0
    return dg.AssetCheckResult(
        check_name=DEAD_LETTER_CHECK,
        passed=rate <= max_rate,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={
            "dead_lettered": dead_lettered,
            "records": records,
            "dead_letter_rate": rate,
            "dead_letter_rate_threshold": max_rate,
        },
        description=(
            f"{dead_lettered} of {records} records dead-lettered ({rate:.2%}; at most {max_rate:.2%} allowed)"
            if records
            else "nothing to post in this run"
        ),
    )
