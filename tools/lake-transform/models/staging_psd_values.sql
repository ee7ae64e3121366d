MODEL (
  name staging.psd_values,
  kind INCREMENTAL_BY_PARTITION,
  partitioned_by (release, commodity_code),
  grain (release, commodity_code, country_code, market_year, attribute_id),
  description 'One value per release, commodity, country, market year and attribute. A run replaces the (release, commodity) partitions of the files it loaded, so when a release month holds several landed files for a commodity, the one loaded last wins (a --rebuild, loading all at once, picks the last by file name).',
  audits (
    unique_combination_of_columns(columns := (release, commodity_code, country_code, market_year, attribute_id)),
    not_null(columns := (release, commodity_code, country_code, market_year, attribute_id))
  )
);

SELECT release, commodity_code, commodity, country_code, country, market_year,
       attribute_id, attribute, unit, value, file, _run_id
FROM raw.psd
-- A merge takes the rows this run loaded; a build takes them all.
WHERE NOT @is_incremental OR _run_id = @run_id
QUALIFY dense_rank() OVER (PARTITION BY release, commodity_code ORDER BY _run_id DESC, file DESC) = 1
