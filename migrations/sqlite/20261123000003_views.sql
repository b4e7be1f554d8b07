-- Views for analysts: the mirror flattened, one row per provtillfälle and one per delprov, each
-- with its student, provområde and skolform. Join on provomrade_id (stable) rather than on the
-- ids of provtillfalle/delprovsresultat, which change when a provområde is replaced.

CREATE VIEW v_provresultat AS
SELECT p.source, p.elev, p.kind, p.amne, p.arskurs, p.kurs, t.skolform, t.uppdaterat, t.genomfort,
       t.intedeltagit, t.sammanvagt_provbetyg, p.id AS provomrade_id, t.ordinal, p.changed_at,
       p.synced_at
FROM provomrade p
JOIN provtillfalle t ON t.provomrade_id = p.id;

CREATE VIEW v_delprovsresultat AS
SELECT p.source, p.elev, p.kind, p.amne, p.arskurs, p.kurs, t.skolform, t.uppdaterat, t.genomfort,
       t.intedeltagit, t.sammanvagt_provbetyg, p.id AS provomrade_id, t.ordinal, p.changed_at,
       p.synced_at, d.ordinal AS delprov_ordinal, d.typ, d.utfall, d.betyg, d.poang,
       d.maluppfyllnad
FROM provomrade p
JOIN provtillfalle t ON t.provomrade_id = p.id
JOIN delprovsresultat d ON d.provtillfalle_id = t.id;
