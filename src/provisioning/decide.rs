//! What a complete pass may remove: the `max_removed_share` guard, as a pure function.
//!
//! A register does not shrink by a fifth overnight; an API that answers a short list (a
//! filtered view, a partial outage that still says "last page") does. So a complete pass that
//! would remove more than `max_removed_share` of a kind's live records removes none of that
//! kind and says so (the pass is `refused`, with a metric and an alert) until an operator
//! confirms (`nprov-sync provisioning accept-removals NAME`, for the next pass) or the next
//! complete pass agrees (it too would remove more than the share: two passes in a row seeing
//! the register shrink is a shrinking register).

/// What to do with one kind's removals.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Removals {
    /// Remove them (none, or within the share, or confirmed).
    Apply,
    /// Hold them back: too large a share, not confirmed.
    Refuse,
}

/// Why removals were applied despite their share, for the log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Confirmed {
    No,
    /// An operator ran `accept-removals`.
    ByOperator,
    /// The previous complete pass refused the same kind's removals.
    ByPreviousPass,
}

/// Decides one kind's removals: `live` records held before the pass, `removing` of them not
/// seen by it.
pub fn removals(live: u64, removing: u64, max_share: f64, confirmed: Confirmed) -> Removals {
    if removing == 0 || live == 0 {
        return Removals::Apply;
    }
    let share = removing as f64 / live as f64;
    if share <= max_share {
        return Removals::Apply;
    }
    match confirmed {
        Confirmed::ByOperator | Confirmed::ByPreviousPass => Removals::Apply,
        Confirmed::No => Removals::Refuse,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removals_within_the_share_are_applied_and_beyond_it_only_when_confirmed() {
        let cases = [
            (100, 0, Confirmed::No, Removals::Apply),
            (0, 0, Confirmed::No, Removals::Apply),
            (100, 20, Confirmed::No, Removals::Apply),
            (100, 21, Confirmed::No, Removals::Refuse),
            (100, 100, Confirmed::No, Removals::Refuse),
            (100, 100, Confirmed::ByOperator, Removals::Apply),
            (100, 50, Confirmed::ByPreviousPass, Removals::Apply),
            (3, 1, Confirmed::No, Removals::Refuse),
        ];
        for (live, removing, confirmed, expected) in cases {
            assert_eq!(
                removals(live, removing, 0.2, confirmed),
                expected,
                "{live} live, {removing} removing, {confirmed:?}"
            );
        }
        assert_eq!(removals(100, 100, 1.0, Confirmed::No), Removals::Apply);
    }
}
