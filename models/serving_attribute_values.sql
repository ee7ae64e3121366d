MODEL (
  name serving.attribute_values,
  kind FULL,
  grain (commodity_code, country_code, market_year, attribute_id),
  description 'Every value of the latest release of each commodity.',
  audits (
    unique_combination_of_columns(columns := (commodity_code, country_code, market_year, attribute_id)),
    not_null(columns := (commodity_code, country_code, market_year, attribute_id, release)),
    coffee_identities(blocking := false)
  )
);

-- The latest release from the per-key state (one row per key), not the history.
WITH latest AS (
  SELECT commodity_code, max(release) AS release FROM staging.psd_latest GROUP BY commodity_code
)
SELECT v.commodity_code, v.commodity, v.country_code, v.country, v.market_year,
       v.attribute_id, v.attribute, v.unit, v.value, v.release
FROM staging.psd_values v
JOIN latest USING (commodity_code, release)
