MODEL (
  name serving.releases,
  kind INCREMENTAL_BY_PARTITION,
  partitioned_by (release, commodity_code),
  grain (release, commodity_code),
  description 'One row per release and commodity loaded. A merge recounts the releases and commodities of the files the run loaded.',
  column_descriptions (files = 'landed files loaded for it', rows = 'rows loaded', loaded_at = 'when the last of them was loaded (UTC)'),
  audits (
    unique_combination_of_columns(columns := (release, commodity_code)),
    not_null(columns := (release, commodity_code))
  )
);

WITH loaded AS (
  SELECT DISTINCT release, commodity_code FROM raw.psd WHERE @is_incremental AND _run_id = @run_id
)
SELECT r.release, r.commodity_code, count(DISTINCT r.file) AS files, count(*) AS rows, max(r._loaded_at) AS loaded_at
FROM raw.psd r
WHERE NOT @is_incremental
GROUP BY r.release, r.commodity_code
UNION ALL
SELECT r.release, r.commodity_code, count(DISTINCT r.file) AS files, count(*) AS rows, max(r._loaded_at) AS loaded_at
FROM raw.psd r
JOIN loaded l ON l.release = r.release AND l.commodity_code = r.commodity_code
GROUP BY r.release, r.commodity_code
