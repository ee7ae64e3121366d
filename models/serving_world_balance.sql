MODEL (
  name serving.world_balance,
  kind FULL,
  grain (commodity_code, market_year),
  description 'The balance of the latest release summed over countries: one row per commodity and market year.',
  column_descriptions (countries = 'countries that reported for that commodity and year'),
  audits (
    unique_combination_of_columns(columns := (commodity_code, market_year)),
    not_null(columns := (commodity_code, market_year, release))
  )
);

SELECT commodity_code, any_value(commodity) AS commodity, market_year, any_value(unit) AS unit,
       sum(beginning_stocks) AS beginning_stocks, sum(production) AS production, sum(imports) AS imports,
       sum(total_supply) AS total_supply, sum(exports) AS exports,
       sum(domestic_consumption) AS domestic_consumption, sum(ending_stocks) AS ending_stocks,
       sum(total_distribution) AS total_distribution,
       count(DISTINCT country_code) AS countries,
       sum(ending_stocks) / NULLIF(sum(domestic_consumption) + sum(exports), 0) AS stocks_to_use,
       release
FROM serving.commodity_balance
GROUP BY commodity_code, market_year, release
