-- The results no longer carry an index on their normalised elev. It made every provområde insert
-- evaluate the expression and insert into one more index at a random place, which was nearly half
-- of what inserting a provområde cost (measured on a first sync of a 20 000-pupil year: 0.59 s of
-- SQLite's time in provomrade inserts with it, 0.31 s without; about 11 % of the client's CPU).
-- The sync writes provområden all day; the join views are read now and then.
DROP INDEX provomrade_elev_key;

-- Only this view looked results up by the normalised elev (once per registered person). It now
-- asks for the set of normalised elevs once per query, which SQLite builds as a temporary index
-- (one pass over provomrade) and probes per person; the other join views drive from provomrade
-- and probe the indexes on the provisioning side, as before.
DROP VIEW v_prov_registered_without_result;
CREATE VIEW v_prov_registered_without_result AS
SELECT p.source AS provisioning_source, p.id AS person_id
FROM prov_person p
WHERE p.removed_at IS NULL
  AND EXISTS (SELECT 1 FROM prov_person_enrolment e
              WHERE e.source = p.source AND e.person_id = p.id AND NOT e.cancelled)
  AND lower(p.id) NOT IN (SELECT lower(replace(replace(r.elev, '{', ''), '}', ''))
                          FROM provomrade r)
  AND NOT EXISTS (SELECT 1 FROM prov_person_external_id x
                  WHERE x.source = p.source AND x.person_id = p.id
                    AND lower(replace(replace(x.value, '{', ''), '}', ''))
                        IN (SELECT lower(replace(replace(r.elev, '{', ''), '}', ''))
                            FROM provomrade r));
