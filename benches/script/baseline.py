#!/usr/bin/env python3
"""What a municipality's data team would run instead of nprov-sync: requests + lxml + sqlite3.

The comparison the catch-up bench runs beside the client (`cargo bench --bench catchup`; see
issue 26, which measured such a script at 3.9x our CPU). It is written the way a careful data
engineer writes it, not to lose: one `requests.Session` (keep-alive, gzip), month-long windows
one at a time, each body parsed by lxml, each window one SQLite transaction that replaces every
provområde it names (an empty one clears its provtillfällen), 429 answered by waiting for
`Retry-After`. It keeps the three mirror tables with the rows nprov-sync keeps, so the bench can
check that both hold the same number.

What it does not do, which nprov-sync does: validate against the XSD, quarantine bad records,
hash content to skip unchanged ones, resume from a watermark after a crash, bound memory (lxml
holds each whole body), or follow local time's transitions.

    baseline.py BASE_URL DATABASE FROM UNTIL [WINDOW_DAYS]

FROM and UNTIL are local times as the API takes them (yyyy-MM-ddTHH:mm). Prints one line per
window and, last, `rows N`: the rows of the three tables together.
"""

import datetime
import sqlite3
import sys
import time

import requests
from lxml import etree

ENDPOINT = "/api/skolplattform/nationellaprov"
FORMAT = "%Y-%m-%dT%H:%M"

SCHEMA = """
PRAGMA journal_mode = WAL;
PRAGMA foreign_keys = ON;
CREATE TABLE IF NOT EXISTS provomrade (
    id INTEGER PRIMARY KEY, elev TEXT NOT NULL, kind TEXT NOT NULL,
    amne TEXT NOT NULL DEFAULT '', arskurs INTEGER NOT NULL DEFAULT 0, kurs TEXT NOT NULL DEFAULT '',
    UNIQUE (elev, kind, amne, arskurs, kurs));
CREATE TABLE IF NOT EXISTS provtillfalle (
    id INTEGER PRIMARY KEY,
    provomrade_id INTEGER NOT NULL REFERENCES provomrade (id) ON DELETE CASCADE,
    ordinal INTEGER NOT NULL, skolform TEXT NOT NULL, uppdaterat TEXT NOT NULL, genomfort TEXT,
    intedeltagit INTEGER NOT NULL, sammanvagt_provbetyg TEXT);
CREATE INDEX IF NOT EXISTS provtillfalle_provomrade ON provtillfalle (provomrade_id);
CREATE TABLE IF NOT EXISTS delprovsresultat (
    id INTEGER PRIMARY KEY,
    provtillfalle_id INTEGER NOT NULL REFERENCES provtillfalle (id) ON DELETE CASCADE,
    ordinal INTEGER NOT NULL, typ TEXT NOT NULL, utfall TEXT NOT NULL,
    betyg TEXT, poang INTEGER, maluppfyllnad INTEGER);
CREATE INDEX IF NOT EXISTS delprovsresultat_provtillfalle ON delprovsresultat (provtillfalle_id);
"""


def local(tag):
    return tag.rsplit("}", 1)[-1]


def child_text(element, name):
    for child in element:
        if local(child.tag) == name:
            return child.text
    return None


def has_child(element, name):
    return any(local(child.tag) == name for child in element)


def fetch(session, url, window_from, window_tom):
    params = {"from": window_from.strftime(FORMAT), "tom": window_tom.strftime(FORMAT)}
    while True:
        response = session.get(url, params=params, timeout=300)
        if response.status_code == 429:
            time.sleep(float(response.headers.get("Retry-After", "1")))
            continue
        response.raise_for_status()
        return response.content


def store(db, body):
    root = etree.fromstring(body)
    students = 0
    # A provområde may come twice in one response (a kurs read in GY and again in VUX): its
    # provtillfällen are then all of them, in order, each with its own skolform.
    seen = {}
    with db:
        for result in root:
            name = local(result.tag)
            if name == "ämnesresultat":
                key = (result.get("elev"), "amne", result.get("ämne"), int(result.get("årskurs")), "")
            elif name == "kursresultat":
                key = (result.get("elev"), "kurs", "", 0, result.get("kurs"))
            else:
                continue
            students += 1
            skolform = result.get("skolform")
            if key in seen:
                provomrade_id, first = seen[key]
            else:
                (provomrade_id,) = db.execute(
                    "INSERT INTO provomrade (elev, kind, amne, arskurs, kurs) VALUES (?, ?, ?, ?, ?) "
                    "ON CONFLICT (elev, kind, amne, arskurs, kurs) DO UPDATE SET elev = elev "
                    "RETURNING id",
                    key,
                ).fetchone()
                # The list is the provområde's whole current one: replace what was there.
                db.execute("DELETE FROM provtillfalle WHERE provomrade_id = ?", (provomrade_id,))
                first = 0
            tillfallen = list(result)
            seen[key] = (provomrade_id, first + len(tillfallen))
            for ordinal, tillfalle in enumerate(tillfallen, start=first):
                intedeltagit = 1 if has_child(tillfalle, "intedeltagit") else 0
                tillfalle_id = db.execute(
                    "INSERT INTO provtillfalle (provomrade_id, ordinal, skolform, uppdaterat, "
                    "genomfort, intedeltagit, sammanvagt_provbetyg) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (
                        provomrade_id,
                        ordinal,
                        skolform,
                        tillfalle.get("uppdaterat"),
                        tillfalle.get("genomfört"),
                        intedeltagit,
                        child_text(tillfalle, "sammanvägtprovbetyg"),
                    ),
                ).lastrowid
                rows = []
                delprov = (c for c in tillfalle if local(c.tag) == "delprovsresultat")
                for position, d in enumerate(delprov):
                    if has_child(d, "intedeltagit"):
                        utfall, betyg, poang, mal = "intedeltagit", None, None, None
                    elif has_child(d, "borttappat"):
                        utfall, betyg, poang, mal = "borttappat", None, None, None
                    else:
                        utfall = "resultat"
                        betyg = child_text(d, "betyg")
                        poang = child_text(d, "poäng")
                        poang = int(poang) if poang is not None else None
                        mal = child_text(d, "måluppfyllnad")
                        mal = None if mal is None else int(mal == "true")
                    rows.append(
                        (tillfalle_id, position, child_text(d, "typ"), utfall, betyg, poang, mal)
                    )
                db.executemany(
                    "INSERT INTO delprovsresultat (provtillfalle_id, ordinal, typ, utfall, betyg, "
                    "poang, maluppfyllnad) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    rows,
                )
    return students


def main():
    base, database, start, until = sys.argv[1:5]
    days = int(sys.argv[5]) if len(sys.argv) > 5 else 31
    url = base.rstrip("/") + ENDPOINT
    db = sqlite3.connect(database)
    db.executescript(SCHEMA)
    session = requests.Session()
    at = datetime.datetime.strptime(start, FORMAT)
    end = datetime.datetime.strptime(until, FORMAT)
    while at <= end:
        tom = min(end, at + datetime.timedelta(days=days) - datetime.timedelta(minutes=1))
        body = fetch(session, url, at, tom)
        students = store(db, body)
        print(f"{at.strftime(FORMAT)} .. {tom.strftime(FORMAT)}: {len(body)} bytes, {students} provområden")
        at = tom + datetime.timedelta(minutes=1)
    (rows,) = db.execute(
        "SELECT (SELECT count(*) FROM provomrade) + (SELECT count(*) FROM provtillfalle) "
        "+ (SELECT count(*) FROM delprovsresultat)"
    ).fetchone()
    db.close()
    print(f"rows {rows}")


if __name__ == "__main__":
    main()
