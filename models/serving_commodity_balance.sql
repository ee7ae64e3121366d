MODEL (
  name serving.commodity_balance,
  kind FULL,
  grain (commodity_code, country_code, market_year),
  description 'The supply and distribution balance of the latest release: one row per commodity, country and market year.',
  column_descriptions (stocks_to_use = 'ending_stocks / (domestic_consumption + exports); NULL when that is 0'),
  audits (
    unique_combination_of_columns(columns := (commodity_code, country_code, market_year)),
    not_null(columns := (commodity_code, country_code, market_year, release)),
    balance_identities(blocking := false)
  )
);

WITH b AS (
  SELECT commodity_code, any_value(commodity) AS commodity, country_code, any_value(country) AS country,
         market_year, any_value(unit) AS unit,
         max(value) FILTER (WHERE attribute_id = '020') AS beginning_stocks,
         max(value) FILTER (WHERE attribute_id = '028') AS production,
         max(value) FILTER (WHERE attribute_id = '057') AS imports,
         max(value) FILTER (WHERE attribute_id = '086') AS total_supply,
         max(value) FILTER (WHERE attribute_id = '088') AS exports,
         max(value) FILTER (WHERE attribute_id = '125') AS domestic_consumption,
         max(value) FILTER (WHERE attribute_id = '176') AS ending_stocks,
         max(value) FILTER (WHERE attribute_id = '178') AS total_distribution,
         release
  FROM serving.attribute_values
  WHERE attribute_id IN ('020', '028', '057', '086', '088', '125', '176', '178')
  GROUP BY commodity_code, country_code, market_year, release
)
SELECT commodity_code, commodity, country_code, country, market_year, unit,
       beginning_stocks, production, imports, total_supply, exports, domestic_consumption,
       ending_stocks, total_distribution,
       ending_stocks / NULLIF(domestic_consumption + exports, 0) AS stocks_to_use,
       release
FROM b
