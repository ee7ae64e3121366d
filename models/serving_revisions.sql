MODEL (
  name serving.revisions,
  kind INCREMENTAL_BY_PARTITION,
  partitioned_by (commodity_code, release),
  -- A recomputed month can end up with no revisions at all: replace it anyway.
  partitions_from staging.psd_changes,
  grain (commodity_code, country_code, market_year, attribute_id, release),
  description 'Every release whose value differs from the previous release that had the same commodity, country, market year and attribute. A merge recomputes the months staging.psd_changes recomputed.',
  column_descriptions (change = 'value - previous_value'),
  audits (
    unique_combination_of_columns(columns := (commodity_code, country_code, market_year, attribute_id, release)),
    not_null(columns := (commodity_code, country_code, market_year, attribute_id, release, previous_release))
  )
);

SELECT commodity_code, country_code, market_year, attribute_id, attribute,
       release, previous_release, value, previous_value, value - previous_value AS change
FROM staging.psd_changes
WHERE previous_release IS NOT NULL AND value IS DISTINCT FROM previous_value
  AND (NOT @is_incremental OR _run_id = @run_id)
