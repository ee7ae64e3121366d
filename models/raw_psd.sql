MODEL (
  name raw.psd,
  kind LANDING_INGEST (pattern 'psd/*/*/*.csv.gzip'),
  description 'Every row of every landed PSD file, as landed: each file is loaded once, and every release (vintage) is kept. release is the first day of the landing folder''s month.',
  column_descriptions (
    release = 'first day of the release month (the landing folder psd/yyyy/mm)',
    file = 'the landed file, relative to the landing dir',
    landed_order = 'the file''s place in landing order (psd-extract''s landed_files.file_id); NULL for a file the state DB has no record of (landed after the snapshot a restore brought back)',
    _run_id = 'state DB run that loaded the file'
  ),
  grain (file, commodity_code, country_code, market_year, attribute_id),
  audits (
    number_of_rows(threshold := 1),
    not_null(columns := (release, file, commodity_code, country_code, market_year, attribute_id)),
    -- One value per key in a file: a file that repeats a key is stopped here, before
    -- any model reads it.
    unique_combination_of_columns(columns := (file, commodity_code, country_code, market_year, attribute_id))
  )
);

-- release and file are worked out once per landed file, not once per row (a third of
-- the load's time at 2M rows); a LEFT JOIN, so a row the join missed would fail the
-- not_null audit instead of vanishing.
WITH landed AS (
  SELECT
    path,
    make_date(
      CAST(regexp_extract(path, '/psd/(\d{4})/(\d{2})/[^/]+$', 1) AS INTEGER),
      CAST(regexp_extract(path, '/psd/(\d{4})/(\d{2})/[^/]+$', 2) AS INTEGER),
      1) AS release,
    regexp_extract(path, 'psd/\d{4}/\d{2}/[^/]+$') AS file,
    landed_order
  FROM (SELECT unnest(@landing_files) AS path, unnest(@landing_order) AS landed_order)
)
SELECT
  l.release,
  l.file,
  l.landed_order,
  Commodity_Code AS commodity_code,
  Commodity_Description AS commodity,
  Country_Code AS country_code,
  Country_Name AS country,
  Market_Year AS market_year,
  Calendar_Year AS calendar_year,
  "Month" AS month,
  Attribute_ID AS attribute_id,
  Attribute_Description AS attribute,
  Unit_ID AS unit_id,
  Unit_Description AS unit,
  "Value" AS value,
  CAST(@run_id AS BIGINT) AS _run_id,
  now()::TIMESTAMP AS _loaded_at
FROM read_csv(
  @landing_files,
  -- The dialect is pinned, not sniffed (auto_detect off: DuckDB otherwise still sniffs
  -- each file against the options, ~0.1 s of 100 releases): psd-extract checks every row
  -- against it (a quoted field may hold "" for a quote), so what lands always loads.
  header = true, filename = true, compression = 'gzip', delim = ',', quote = '"', escape = '"', auto_detect = false,
  columns = {
    'Commodity_Code': 'VARCHAR', 'Commodity_Description': 'VARCHAR',
    'Country_Code': 'VARCHAR', 'Country_Name': 'VARCHAR',
    'Market_Year': 'INTEGER', 'Calendar_Year': 'INTEGER', 'Month': 'INTEGER',
    'Attribute_ID': 'VARCHAR', 'Attribute_Description': 'VARCHAR',
    'Unit_ID': 'VARCHAR', 'Unit_Description': 'VARCHAR', 'Value': 'DOUBLE'
  }
) r
LEFT JOIN landed l ON l.path = r.filename
