-- The results no longer carry an index on their normalised elev: every provområde the sync
-- writes paid for the expression and one more index entry (on SQLite nearly half of a
-- provområde insert's cost), for a view read now and then. PostgreSQL plans the one view that
-- used it, v_prov_registered_without_result, as a hash anti-join over provomrade without it.
DROP INDEX provomrade_elev_key;
