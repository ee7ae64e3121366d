MODEL (
  name staging.psd_latest,
  kind INCREMENTAL_BY_PARTITION,
  partitioned_by commodity_code,
  grain (commodity_code, country_code, market_year, attribute_id),
  columns (
    commodity_code VARCHAR, country_code VARCHAR, market_year INTEGER, attribute_id VARCHAR,
    attribute VARCHAR, release DATE, value DOUBLE, previous_release DATE, previous_value DOUBLE,
    revised BOOLEAN
  ),
  description 'For every commodity, country, market year and attribute: its latest release and value, and the release and value before. The state that lets a new release find its previous values without reading the history: a run that only adds newer releases reads this table and the new rows. And whether its value ever changed: serving.revisions'' build leaves the keys never revised out of its window.',
  column_descriptions (
    revised = 'its value differed between two of its releases (a value after none, or none after one, counts): it has a row in serving.revisions'
  ),
  audits (
    unique_combination_of_columns(columns := (commodity_code, country_code, market_year, attribute_id)),
    -- revised too: serving.revisions' build would leave a NULL's key out unseen.
    not_null(columns := (commodity_code, country_code, market_year, attribute_id, release, revised))
  )
);

-- Build: the last two rows of each history (an aggregate: 5x faster than a window).
(WITH last_two AS (
  SELECT commodity_code, country_code, market_year, attribute_id,
         max_by({'attribute': attribute, 'release': release, 'value': value}, release, 2) AS top,
         -- Not all one value: two values, or a value and none (min and max skip NULLs).
         min(value) IS NOT NULL AND (min(value) <> max(value) OR bool_or(value IS NULL)) AS revised
  FROM staging.psd_values
  WHERE NOT @is_incremental
  GROUP BY commodity_code, country_code, market_year, attribute_id
)
SELECT commodity_code, country_code, market_year, attribute_id, top[1].attribute AS attribute,
       top[1].release AS release, top[1].value AS value,
       top[2].release AS previous_release, top[2].value AS previous_value, revised
FROM last_two)

UNION ALL

-- Merge: every commodity the run loaded is recomputed (its partition replaced).
(WITH touched AS (
  SELECT commodity_code, min(release) AS first_release
  FROM staging.psd_values WHERE @is_incremental AND _run_id = @run_id
  GROUP BY commodity_code
), stored AS (
  SELECT commodity_code, max(release) AS last_release
  FROM @this_model WHERE commodity_code IN (SELECT commodity_code FROM touched)
  GROUP BY commodity_code
), forward AS (
  -- Only releases newer than all it had: the stored rows plus the new ones.
  SELECT t.commodity_code FROM touched t LEFT JOIN stored s USING (commodity_code)
  WHERE s.last_release IS NULL OR t.first_release > s.last_release
), history AS (
  -- A backfilled or re-landed month: from the commodity's whole history.
  SELECT commodity_code FROM touched EXCEPT SELECT commodity_code FROM forward
), one_release AS (
  SELECT count(DISTINCT release) <= 1 AS yes
  FROM staging.psd_values WHERE @is_incremental AND _run_id = @run_id
), new_rows AS (
  -- A forward commodity's new rows: each key's newest, with the one before it among them.
  -- A run that loaded one release has one new row per key and none before it: no window
  -- (at 2M rows the window was a third of this merge). @is_incremental in both: the
  -- scalar subquery keeps DuckDB from stopping a build's read at the empty `forward`.
  SELECT commodity_code, country_code, market_year, attribute_id, attribute, release, value,
         NULL::DATE AS new_previous_release, NULL::DOUBLE AS new_previous_value,
         false AS new_revised
  FROM staging.psd_values WHERE @is_incremental AND _run_id = @run_id AND commodity_code IN (SELECT commodity_code FROM forward)
    AND (SELECT yes FROM one_release)
  UNION ALL
  SELECT commodity_code, country_code, market_year, attribute_id, attribute, release, value,
         lag(release) OVER w AS new_previous_release, lag(value) OVER w AS new_previous_value,
         -- At the newest row (the one kept) the window's frame is every new row of the key:
         -- whether they differ among themselves.
         min(value) OVER w IS NOT NULL AND (min(value) OVER w <> max(value) OVER w OR bool_or(value IS NULL) OVER w) AS new_revised
  FROM staging.psd_values WHERE @is_incremental AND _run_id = @run_id AND commodity_code IN (SELECT commodity_code FROM forward)
    AND NOT (SELECT yes FROM one_release)
  WINDOW w AS (PARTITION BY commodity_code, country_code, market_year, attribute_id ORDER BY release)
  QUALIFY lead(release) OVER w IS NULL
), forward_rows AS (
  -- Every new release is newer than all stored ones: a key's new row wins, its previous
  -- the new row before it or else the stored latest; a key with no new row keeps its
  -- stored row. A join of the new rows with the stored ones, no sort of both.
  SELECT commodity_code, country_code, market_year, attribute_id,
         CASE WHEN n.release IS NULL THEN s.attribute ELSE n.attribute END AS attribute,
         coalesce(n.release, s.release) AS release,
         CASE WHEN n.release IS NULL THEN s.value ELSE n.value END AS value,
         CASE WHEN n.release IS NULL THEN s.previous_release
              WHEN n.new_previous_release IS NOT NULL THEN n.new_previous_release
              ELSE s.release END AS previous_release,
         CASE WHEN n.release IS NULL THEN s.previous_value
              WHEN n.new_previous_release IS NOT NULL THEN n.new_previous_value
              ELSE s.value END AS previous_value,
         -- Revised before, among the new rows, or from the stored latest value to the new
         -- ones (which, when they do not differ among themselves, are all the newest's).
         CASE WHEN n.release IS NULL THEN s.revised
              ELSE coalesce(s.revised, false) OR n.new_revised
                   OR (s.release IS NOT NULL AND n.value IS DISTINCT FROM s.value) END AS revised
  FROM new_rows n
  FULL JOIN (SELECT * FROM @this_model WHERE commodity_code IN (SELECT commodity_code FROM forward)) s
    USING (commodity_code, country_code, market_year, attribute_id)
)
SELECT * FROM forward_rows
UNION ALL
-- @is_incremental here too, though `history` is empty in a build: unguarded, this read of
-- staging.psd_values equalled the build branch's, and DuckDB's common-subplan optimizer
-- materialised it once for both: every release in memory (7.8M rows, 0.3-0.4 s and half
-- of a 100-release coffee build's peak memory).
SELECT commodity_code, country_code, market_year, attribute_id, attribute, release, value,
       lag(release) OVER w AS previous_release, lag(value) OVER w AS previous_value,
       min(value) OVER w IS NOT NULL AND (min(value) OVER w <> max(value) OVER w OR bool_or(value IS NULL) OVER w) AS revised
FROM staging.psd_values
WHERE @is_incremental AND commodity_code IN (SELECT commodity_code FROM history)
WINDOW w AS (PARTITION BY commodity_code, country_code, market_year, attribute_id ORDER BY release)
QUALIFY lead(release) OVER w IS NULL)
