AUDIT (name balance_identities, blocking false);

-- The PSD balance identities (shared/notes/usda-psd.md). They hold for almost every
-- row of real releases, not all: this reports the rows that break them.
SELECT commodity_code, country_code, market_year, 'total_supply = beginning_stocks + production + imports' AS identity,
       total_supply AS lhs, beginning_stocks + production + imports AS rhs
FROM @this_model WHERE abs(total_supply - (beginning_stocks + production + imports)) > 0.5
UNION ALL
SELECT commodity_code, country_code, market_year, 'total_distribution = total_supply',
       total_distribution, total_supply
FROM @this_model WHERE abs(total_distribution - total_supply) > 0.5
UNION ALL
SELECT commodity_code, country_code, market_year, 'total_distribution = exports + domestic_consumption + ending_stocks',
       total_distribution, exports + domestic_consumption + ending_stocks
FROM @this_model WHERE abs(total_distribution - (exports + domestic_consumption + ending_stocks)) > 0.5
