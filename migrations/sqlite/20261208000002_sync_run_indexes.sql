-- sync_run keeps no secondary index. Each one cost a page written with every window's row: a
-- re-read of a school year in daily windows wrote about 15 KB a window of bookkeeping, the row,
-- its two index entries and their commit (measured on SQLite: 3.3 pages a window, 1.7 % of a
-- first sync's bytes). What read through them reads little: the latest runs of a source
-- (`status`) walk the ids backwards, which follow time; the daily prune and `source list` read
-- the table once, and retention keeps it small.
DROP INDEX sync_run_source_started;
DROP INDEX sync_run_started;
