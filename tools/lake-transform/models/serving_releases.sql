MODEL (
  name serving.releases,
  kind FULL,
  grain (release, commodity_code),
  description 'One row per release and commodity loaded.',
  column_descriptions (files = 'landed files loaded for it', rows = 'rows loaded', loaded_at = 'when the last of them was loaded (UTC)'),
  audits (
    unique_combination_of_columns(columns := (release, commodity_code)),
    not_null(columns := (release, commodity_code))
  )
);

SELECT release, commodity_code, count(DISTINCT file) AS files, count(*) AS rows, max(_loaded_at) AS loaded_at
FROM raw.psd
GROUP BY release, commodity_code
