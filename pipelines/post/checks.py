"""The dead-letter rate asset check on each sink asset.

The post op evaluates it at the end of every run (it knows the counts) and logs the evaluation; the
check definition makes it visible in the UI and lets it be re-run from the latest materialization.
"""

import dagster as dg

DEAD_LETTER_CHECK = "dead_letter_rate"


def dead_letter_evaluation(
    asset_key: dg.AssetKey, dead_lettered: int, records: int, max_rate: float
) -> dg.AssetCheckEvaluation:
    rate = dead_lettered / records if records else 0.0
    return dg.AssetCheckEvaluation(
        asset_key=asset_key,
        check_name=DEAD_LETTER_CHECK,
        passed=rate <= max_rate,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={"dead_lettered": dead_lettered, "records": records, "rate": rate, "max_rate": max_rate},
        description=f"{dead_lettered} of {records} records dead-lettered ({rate:.2%}; at most {max_rate:.2%} allowed)",
    )


def build_dead_letter_check(asset_key: dg.AssetKey) -> dg.AssetChecksDefinition:
    """Re-evaluates the rate from the sink asset's latest materialization metadata."""

    @dg.asset_check(
        asset=asset_key,
        name=DEAD_LETTER_CHECK,
        description="Fails (warning) when the last post run dead-lettered more than dead_letter_max_rate of its records.",
    )
    def dead_letter_rate(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
        event = context.instance.get_latest_materialization_event(asset_key)
        if event is None or event.asset_materialization is None:
            return dg.AssetCheckResult(passed=True, description="no post run yet")
        metadata = event.asset_materialization.metadata
        dead = int(metadata["dead_lettered"].value) if "dead_lettered" in metadata else 0
        records = int(metadata["records"].value) if "records" in metadata else 0
        max_rate = (
            float(metadata["dead_letter_max_rate"].value) if "dead_letter_max_rate" in metadata else 0.01
        )
        evaluation = dead_letter_evaluation(asset_key, dead, records, max_rate)
        return dg.AssetCheckResult(
            passed=evaluation.passed,
            severity=evaluation.severity,
            metadata=evaluation.metadata,
            description=evaluation.description,
        )

    return dead_letter_rate
