//! The platform's semantics, simulated: a population whose results change at known instants,
//! and the API's answer to a window — every student with a change stamped within it, in their
//! *current* state, whatever the window.
//!
//! Changes are stamped with local wall-clock minutes, as the API's `from`/`tom` are; in the
//! autumn hour that repeats, two changes an hour apart can carry the same stamp. This is the
//! "naive" reading of local time, the one that makes daylight saving hardest for a client.

use chrono::{DateTime, Duration, NaiveDateTime, Utc};
use chrono_tz::Tz;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::Population;
use crate::domain::{Omrade, Provomrade};

/// One change on the platform.
#[derive(Clone, Copy, Debug)]
struct Change {
    stamp: NaiveDateTime,
    at: DateTime<Utc>,
    student: u32,
}

pub struct Platform {
    pub population: Population,
    pub tz: Tz,
    /// Sorted by stamp, for window queries.
    changes: Vec<Change>,
    /// Per student, the instants of its changes in time order: revision k happened at [k].
    history: Vec<Vec<DateTime<Utc>>>,
}

impl Platform {
    /// A platform on which every student's results change 1 to `max_changes` times between
    /// `start` and `end`, at seeded random minutes.
    pub fn new(
        population: Population,
        tz: Tz,
        start: DateTime<Utc>,
        end: DateTime<Utc>,
        max_changes: u32,
    ) -> Platform {
        let span = (end - start).num_minutes().max(1);
        let mut rng = ChaCha8Rng::seed_from_u64(population.seed ^ 0x5157_4D55_4C41_5445);
        let mut history = Vec::with_capacity(population.students as usize);
        let mut changes = Vec::new();
        for student in 0..population.students as u32 {
            let n = rng.random_range(1..=max_changes.max(1));
            let mut times: Vec<DateTime<Utc>> = (0..n)
                .map(|_| start + Duration::minutes(rng.random_range(0..span)))
                .collect();
            times.sort();
            for at in &times {
                changes.push(Change {
                    stamp: at.with_timezone(&tz).naive_local(),
                    at: *at,
                    student,
                });
            }
            history.push(times);
        }
        changes.sort_by_key(|c| (c.stamp, c.student));
        Platform {
            population,
            tz,
            changes,
            history,
        }
    }

    /// The student's revision as of `now`, if its results exist by then.
    pub fn revision_at(&self, student: u32, now: DateTime<Utc>) -> Option<u32> {
        let h = &self.history[student as usize];
        let done = h.partition_point(|t| *t <= now);
        (done > 0).then(|| done as u32 - 1)
    }

    /// The API's answer: students with a change stamped in `[from, tom]` (whole minutes, both
    /// inclusive) that happened by `now`, in their state as of `now`; ämnesresultat first.
    pub fn answer(
        &self,
        from: NaiveDateTime,
        tom: NaiveDateTime,
        now: DateTime<Utc>,
    ) -> Vec<Provomrade> {
        let students = self.changed_students(from, tom, now);
        self.records_of(&students, now).collect()
    }

    /// The students in the API's answer to `[from, tom]` as of `now` (see [`Platform::answer`]),
    /// by index. Only indices: a whole year's answer is a few hundred kilobytes of them, where
    /// its records would be hundreds of megabytes.
    pub fn changed_students(
        &self,
        from: NaiveDateTime,
        tom: NaiveDateTime,
        now: DateTime<Utc>,
    ) -> Vec<u32> {
        let lo = self.changes.partition_point(|c| c.stamp < from);
        let hi = self
            .changes
            .partition_point(|c| c.stamp <= tom + Duration::seconds(59));
        let mut students: Vec<u32> = self.changes[lo..hi.max(lo)]
            .iter()
            .filter(|c| c.at <= now)
            .map(|c| c.student)
            .collect();
        students.sort_unstable();
        students.dedup();
        students
    }

    /// The students' records as of `now` in the order the XSD wants (every ämnesresultat, then
    /// every kursresultat), generated one student at a time as the iterator is advanced.
    pub fn records_of<'a>(
        &'a self,
        students: &'a [u32],
        now: DateTime<Utc>,
    ) -> impl Iterator<Item = Provomrade> + 'a {
        [true, false].into_iter().flat_map(move |want_amne| {
            students.iter().flat_map(move |&s| {
                self.revision_at(s, now)
                    .map(|r| self.population.student(u64::from(s), r))
                    .unwrap_or_default()
                    .into_iter()
                    .filter(move |p| matches!(p.key.omrade, Omrade::Amne { .. }) == want_amne)
            })
        })
    }

    /// Everything the platform holds as of `now`, as a full sync should end up with it.
    pub fn current_state(&self, now: DateTime<Utc>) -> Vec<Provomrade> {
        let everyone: Vec<u32> = (0..self.population.students as u32).collect();
        self.records_of(&everyone, now).collect()
    }

    /// Number of changes that happened by `now`.
    pub fn changes_by(&self, now: DateTime<Utc>) -> usize {
        self.changes.iter().filter(|c| c.at <= now).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xml::version::newest;
    use chrono_tz::Europe::Stockholm;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s)
            .expect("time")
            .with_timezone(&Utc)
    }

    #[test]
    fn a_window_returns_current_state_of_students_changed_within_it() {
        let pop = Population {
            students: 200,
            seed: 3,
            version: newest(),
            year: 2026,
        };
        let p = Platform::new(
            pop,
            Stockholm,
            t("2026-01-01T00:00:00Z"),
            t("2026-02-01T00:00:00Z"),
            3,
        );
        let now = t("2026-03-01T00:00:00Z");
        let all = p.answer(
            "2025-12-31T00:00:00".parse().expect("from"),
            "2026-02-02T00:00:00".parse().expect("tom"),
            now,
        );
        assert_eq!(all, p.current_state(now));
        // Before anything happened, nothing exists.
        assert!(p.current_state(t("2025-12-01T00:00:00Z")).is_empty());
        // A student's revision counts its changes so far.
        let s = 7;
        let last = p.history[s].len() as u32 - 1;
        assert_eq!(p.revision_at(s as u32, now), Some(last));
    }
}
