AUDIT (name coffee_identities, blocking false);

-- Coffee's own identities (shared/notes/usda-psd.md): production and trade are the
-- sums of their parts. Reports the breaking rows.
WITH p AS (
  SELECT commodity_code, country_code, market_year,
         max(value) FILTER (WHERE attribute_id = '028') AS production,
         max(value) FILTER (WHERE attribute_id = '029') + max(value) FILTER (WHERE attribute_id = '053')
           + max(value) FILTER (WHERE attribute_id = '056') AS production_parts,
         max(value) FILTER (WHERE attribute_id = '057') AS imports,
         max(value) FILTER (WHERE attribute_id = '058') + max(value) FILTER (WHERE attribute_id = '075')
           + max(value) FILTER (WHERE attribute_id = '082') AS imports_parts,
         max(value) FILTER (WHERE attribute_id = '088') AS exports,
         max(value) FILTER (WHERE attribute_id = '090') + max(value) FILTER (WHERE attribute_id = '107')
           + max(value) FILTER (WHERE attribute_id = '114') AS exports_parts,
         max(value) FILTER (WHERE attribute_id = '125') AS domestic_consumption,
         max(value) FILTER (WHERE attribute_id = '141') + max(value) FILTER (WHERE attribute_id = '154') AS consumption_parts
  FROM @this_model
  WHERE commodity_code = '0711100'
  GROUP BY commodity_code, country_code, market_year
)
SELECT commodity_code, country_code, market_year, 'production = arabica + robusta + other' AS identity, production AS lhs, production_parts AS rhs
FROM p WHERE abs(production - production_parts) > 0.5
UNION ALL
SELECT commodity_code, country_code, market_year, 'imports = bean + roast & ground + soluble', imports, imports_parts
FROM p WHERE abs(imports - imports_parts) > 0.5
UNION ALL
SELECT commodity_code, country_code, market_year, 'exports = bean + roast & ground + soluble', exports, exports_parts
FROM p WHERE abs(exports - exports_parts) > 0.5
UNION ALL
SELECT commodity_code, country_code, market_year, 'domestic consumption = roast & ground + soluble', domestic_consumption, consumption_parts
FROM p WHERE abs(domestic_consumption - consumption_parts) > 0.5
