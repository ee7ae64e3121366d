MODEL (
  name staging.psd_changes,
  kind INCREMENTAL_BY_PARTITION,
  partitioned_by (commodity_code, release),
  grain (commodity_code, country_code, market_year, attribute_id, release),
  description 'Every value with the value of the previous release that had it. A merge recomputes the newest release of each commodity it touched from staging.psd_latest (no history read), and, for a backfilled or re-landed older month, that month and the month after it from the history.',
  column_descriptions (_run_id = 'the run that last computed the row'),
  audits (
    unique_combination_of_columns(columns := (commodity_code, country_code, market_year, attribute_id, release)),
    not_null(columns := (commodity_code, country_code, market_year, attribute_id, release))
  ),
  -- Inside a run's transaction the tables it changed have no fresh statistics, and
  -- DuckDB's join-order optimizer then hashes the whole history instead of the few
  -- affected releases (1.5 s instead of 0.2 s at 100 releases): keep the join order
  -- as written, history on the probe side.
  session_properties (disabled_optimizers = 'join_order')
);

-- Build: a window over every release.
SELECT commodity_code, country_code, market_year, attribute_id, attribute, release, value,
       lag(release) OVER w AS previous_release, lag(value) OVER w AS previous_value,
       CAST(@run_id AS BIGINT) AS _run_id
FROM staging.psd_values
WHERE NOT @is_incremental
WINDOW w AS (PARTITION BY commodity_code, country_code, market_year, attribute_id ORDER BY release)

UNION ALL

-- Merge: only the affected releases.
(WITH touched AS (
  SELECT DISTINCT commodity_code, release FROM staging.psd_values WHERE @is_incremental AND _run_id = @run_id
), newest AS (
  -- Each touched commodity's newest release: its rows, with their previous values, are
  -- exactly the rows of staging.psd_latest at that release.
  SELECT commodity_code, max(release) AS release FROM staging.psd_latest
  WHERE commodity_code IN (SELECT commodity_code FROM touched)
  GROUP BY commodity_code
), older AS (
  SELECT commodity_code, release FROM touched EXCEPT SELECT commodity_code, release FROM newest
), affected AS (
  -- An older touched month and the month after it (whose previous values change).
  SELECT commodity_code, release FROM older
  UNION
  SELECT o.commodity_code, min(v.release)
  FROM older o JOIN staging.psd_values v ON v.commodity_code = o.commodity_code AND v.release > o.release
  GROUP BY o.commodity_code, o.release
  EXCEPT
  SELECT commodity_code, release FROM newest
), previous AS (
  SELECT a.commodity_code, a.release AS at_release, v.country_code, v.market_year, v.attribute_id,
         max(v.release) AS previous_release, max_by(v.value, v.release) AS previous_value
  FROM staging.psd_values v
  JOIN affected a ON v.commodity_code = a.commodity_code AND v.release < a.release
  GROUP BY a.commodity_code, a.release, v.country_code, v.market_year, v.attribute_id
)
SELECT l.commodity_code, l.country_code, l.market_year, l.attribute_id, l.attribute, l.release, l.value,
       l.previous_release, l.previous_value, CAST(@run_id AS BIGINT) AS _run_id
FROM staging.psd_latest l
JOIN newest n ON n.commodity_code = l.commodity_code AND n.release = l.release
UNION ALL
SELECT c.commodity_code, c.country_code, c.market_year, c.attribute_id, c.attribute, c.release, c.value,
       p.previous_release, p.previous_value, CAST(@run_id AS BIGINT) AS _run_id
FROM staging.psd_values c
JOIN affected a ON a.commodity_code = c.commodity_code AND a.release = c.release
LEFT JOIN previous p
  ON p.commodity_code = c.commodity_code AND p.at_release = c.release AND p.country_code = c.country_code
 AND p.market_year = c.market_year AND p.attribute_id = c.attribute_id)
