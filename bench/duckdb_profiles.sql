-- The peer of `segsync extract --from profiles-sync`: one profile a line
-- from a Profiles Sync unload, by DuckDB. The same work: the traits the
-- default mapping reads, latest by seq (a latest null means unset), values
-- parsed as JSON, and the ids of the source_id type (user_id), for the
-- profiles that have one, and each profile's first and last `timestamp`
-- over both tables (segsync writes them as the profile's created_at and
-- updated_at: a peer does the same work, issue 46).
-- bench/duckdb_run.py fills in {unload} and {out}:
--   python3 bench/duckdb_run.py UNLOAD_DIR OUT.ndjson
COPY (
  WITH latest AS (
    SELECT canonical_segment_id AS id, name, value
    FROM read_parquet('{unload}/user_traits/*.parquet')
    WHERE name IN ('name', 'firstName', 'first_name', 'lastName', 'last_name', 'email',
                   'phone', 'description', 'birthdate', 'birthday', 'address', 'street',
                   'line_1', 'line_2', 'city', 'state', 'postalCode', 'postal_code',
                   'country', 'metadata')
    QUALIFY row_number() OVER (PARTITION BY canonical_segment_id, name ORDER BY seq DESC) = 1
  ),
  traits AS (
    SELECT id, json_group_object(name, json(value)) AS traits
    FROM latest WHERE value IS NOT NULL GROUP BY id
  ),
  ids AS (
    SELECT canonical_segment_id AS id, list(value ORDER BY seq) AS user_ids
    FROM read_parquet('{unload}/user_identifiers/*.parquet')
    WHERE type = 'user_id' GROUP BY id
  ),
  span AS (
    SELECT id, min(ts) AS created_at, max(ts) AS updated_at FROM (
      SELECT canonical_segment_id AS id, "timestamp" AS ts
      FROM read_parquet('{unload}/user_traits/*.parquet')
      UNION ALL
      SELECT canonical_segment_id AS id, "timestamp" AS ts
      FROM read_parquet('{unload}/user_identifiers/*.parquet')
    ) GROUP BY id
  )
  SELECT ids.id AS segment_id, coalesce(traits.traits, json_object()) AS traits, ids.user_ids,
         span.created_at, span.updated_at
  FROM ids LEFT JOIN traits USING (id) LEFT JOIN span USING (id)
) TO '{out}' (FORMAT JSON);
