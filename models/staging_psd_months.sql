MODEL (
  name staging.psd_months,
  kind INCREMENTAL_BY_PARTITION,
  partitioned_by (commodity_code, release),
  grain (commodity_code, release),
  description 'Every release month of each commodity, with the run that last recomputed its revisions. A merge lists the months whose revisions the run recomputes: the newest month of each commodity it loaded and, for a backfilled or re-landed older month, that month and the month after it (whose previous values change). serving.revisions replaces exactly these months, also those left with no revisions.',
  column_descriptions (_run_id = 'the run that last recomputed the month'),
  audits (
    unique_combination_of_columns(columns := (commodity_code, release)),
    not_null(columns := (commodity_code, release, _run_id))
  )
);

-- From staging.psd_picks (a row per release and commodity), never the history.
WITH months AS (
  SELECT DISTINCT commodity_code, release FROM staging.psd_picks
), touched AS (
  SELECT commodity_code, release FROM staging.psd_picks WHERE @is_incremental AND _run_id = @run_id
), newest AS (
  SELECT commodity_code, max(release) AS release FROM months
  WHERE commodity_code IN (SELECT commodity_code FROM touched)
  GROUP BY commodity_code
), after_older AS (
  -- The month after each touched month (none after the newest).
  SELECT t.commodity_code, min(m.release) AS release
  FROM touched t JOIN months m ON m.commodity_code = t.commodity_code AND m.release > t.release
  GROUP BY t.commodity_code, t.release
)
SELECT commodity_code, release, CAST(@run_id AS BIGINT) AS _run_id FROM months WHERE NOT @is_incremental
UNION ALL
SELECT commodity_code, release, CAST(@run_id AS BIGINT) AS _run_id
FROM (SELECT * FROM touched UNION SELECT * FROM newest UNION SELECT * FROM after_older)
