MODEL (
  name staging.psd_values,
  kind FULL,
  grain (release, commodity_code, country_code, market_year, attribute_id),
  description 'One value per release, commodity, country, market year and attribute. When a release month holds several landed files for a commodity, the one loaded last wins.',
  audits (
    unique_combination_of_columns(columns := (release, commodity_code, country_code, market_year, attribute_id)),
    not_null(columns := (release, commodity_code, country_code, market_year, attribute_id))
  )
);

SELECT release, commodity_code, commodity, country_code, country, market_year,
       attribute_id, attribute, unit, value, file
FROM raw.psd
QUALIFY dense_rank() OVER (PARTITION BY release, commodity_code ORDER BY _run_id DESC, file DESC) = 1
