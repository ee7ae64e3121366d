MODEL (
  name serving.revisions,
  kind INCREMENTAL_BY_PARTITION,
  partitioned_by (commodity_code, release),
  -- A recomputed month can end up with no revisions at all: replace it anyway.
  partitions_from staging.psd_months,
  grain (commodity_code, country_code, market_year, attribute_id, release),
  description 'Every release whose value differs from the previous release that had the same commodity, country, market year and attribute. A merge recomputes the months staging.psd_months lists for the run: a newest month from staging.psd_latest (no history read), an older one from the history.',
  column_descriptions (change = 'value - previous_value'),
  audits (
    unique_combination_of_columns(columns := (commodity_code, country_code, market_year, attribute_id, release)),
    not_null(columns := (commodity_code, country_code, market_year, attribute_id, release, previous_release))
  ),
  -- Inside a run's transaction the tables it changed have no fresh statistics, and
  -- DuckDB's join-order optimizer then hashes the whole history instead of the few
  -- affected releases (1.5 s instead of 0.2 s at 100 releases): keep the join order
  -- as written, history on the probe side.
  session_properties (disabled_optimizers = 'join_order')
);

-- Build: a window over every release; only the changed values are kept. The window
-- partitions by a number per key (staging.psd_latest has one row per key of
-- staging.psd_values) instead of the four key columns, and sorts only that number, the
-- release, the value and the attribute: the few changed rows get their key columns back
-- from the number afterwards (sorting every release by an integer, not three strings, is
-- 1.25x faster over 100 coffee releases, join included; leaving the key columns out of
-- the sort another 1.4x). Only the keys staging.psd_latest says were revised: one whose
-- every release had the same value has no revision, and its rows stay out of the sort
-- (half the keys of the benchmark's coffee history, most of a real one's old market
-- years). MATERIALIZED: both reads of keys see the same numbering.
(WITH keys AS MATERIALIZED (
  SELECT commodity_code, country_code, market_year, attribute_id, row_number() OVER () AS key
  FROM staging.psd_latest
  WHERE NOT @is_incremental
    AND revised
), changed AS (
  SELECT key, attribute, release, previous_release, value, previous_value
  FROM (
    SELECT k.key, v.attribute, v.release, v.value,
           lag(v.release) OVER w AS previous_release, lag(v.value) OVER w AS previous_value
    FROM staging.psd_values v
    JOIN keys k USING (commodity_code, country_code, market_year, attribute_id)
    WHERE NOT @is_incremental
    WINDOW w AS (PARTITION BY k.key ORDER BY v.release)
  )
  WHERE previous_release IS NOT NULL AND value IS DISTINCT FROM previous_value
)
SELECT k.commodity_code, k.country_code, k.market_year, k.attribute_id, c.attribute,
       c.release, c.previous_release, c.value, c.previous_value, c.value - c.previous_value AS change
FROM changed c
JOIN keys k USING (key))

UNION ALL

-- Merge: only the months the run recomputes.
(WITH months AS (
  SELECT commodity_code, release FROM staging.psd_months WHERE @is_incremental AND _run_id = @run_id
), newest AS (
  -- A commodity's newest month: its rows, with their previous values, are exactly the
  -- rows of staging.psd_latest at that release.
  SELECT m.commodity_code, m.release FROM months m
  JOIN (SELECT commodity_code, max(release) AS release FROM staging.psd_picks GROUP BY commodity_code) p
    ON p.commodity_code = m.commodity_code AND p.release = m.release
), older AS (
  SELECT commodity_code, release FROM months EXCEPT SELECT commodity_code, release FROM newest
), previous AS (
  -- @is_incremental in this branch's reads of staging.psd_values too, though `older` is
  -- empty in a build: on a DuckLake, DuckDB's common-subplan optimizer otherwise
  -- materialised this read with the build branch's, every release in memory (1.9 GiB
  -- and 1.3 s of a 100-release coffee build; tests/it/plans.rs).
  SELECT o.commodity_code, o.release AS at_release, v.country_code, v.market_year, v.attribute_id,
         max(v.release) AS previous_release, max_by(v.value, v.release) AS previous_value
  FROM staging.psd_values v
  JOIN older o ON v.commodity_code = o.commodity_code AND v.release < o.release
  WHERE @is_incremental
  GROUP BY o.commodity_code, o.release, v.country_code, v.market_year, v.attribute_id
)
SELECT l.commodity_code, l.country_code, l.market_year, l.attribute_id, l.attribute,
       l.release, l.previous_release, l.value, l.previous_value, l.value - l.previous_value AS change
FROM staging.psd_latest l
JOIN newest n ON n.commodity_code = l.commodity_code AND n.release = l.release
WHERE @is_incremental AND l.previous_release IS NOT NULL AND l.value IS DISTINCT FROM l.previous_value
UNION ALL
SELECT c.commodity_code, c.country_code, c.market_year, c.attribute_id, c.attribute,
       c.release, p.previous_release, c.value, p.previous_value, c.value - p.previous_value AS change
FROM staging.psd_values c
JOIN older o ON o.commodity_code = c.commodity_code AND o.release = c.release
JOIN previous p
  ON p.commodity_code = c.commodity_code AND p.at_release = c.release AND p.country_code = c.country_code
 AND p.market_year = c.market_year AND p.attribute_id = c.attribute_id
WHERE @is_incremental AND c.value IS DISTINCT FROM p.previous_value)
