MODEL (
  name staging.psd_values,
  kind VIEW,
  grain (release, commodity_code, country_code, market_year, attribute_id),
  description 'One value per release, commodity, country, market year and attribute: the rows of the file staging.psd_picks picked for each release and commodity. A view over raw.psd, not a second copy of every release: a new release is written once.'
);

-- No audits of its own: its grain follows from raw.psd's audits (one value per key in a
-- file, no NULL key) and staging.psd_picks' (one file per release and commodity), which
-- run on every load; auditing the view again re-read every release at each rebuild
-- (1.6 s of a 100-release first build).

-- raw.psd is stored in load order, so a filter on release or _run_id (every incremental
-- reader has one) skips the other row groups by their min/max.
SELECT r.release, r.commodity_code, r.commodity, r.country_code, r.country, r.market_year,
       r.attribute_id, r.attribute, r.unit, r.value, r.file, r._run_id
FROM raw.psd r
JOIN staging.psd_picks p
  ON p.release = r.release AND p.commodity_code = r.commodity_code AND p._run_id = r._run_id AND p.file = r.file
