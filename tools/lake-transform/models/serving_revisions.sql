MODEL (
  name serving.revisions,
  kind FULL,
  grain (commodity_code, country_code, market_year, attribute_id, release),
  description 'Every release whose value differs from the previous release that had the same commodity, country, market year and attribute.',
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
