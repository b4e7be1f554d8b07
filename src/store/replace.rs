//! The replace rules, decided without I/O: what each key of a batch becomes, and the writes
//! that takes. Both backends run these same decisions; they only execute the writes, each in its
//! own dialect. (atuin's split of `diff()` from `operations()`, applied to a document.)
//!
//! A document is applied in batches of [`Group`]s, one per key, each holding that key's elements
//! of the batch in document order. For each group the lookup says what is stored for the key and
//! whether this document already wrote it ([`Stored`], [`Touched`]); [`decide`] picks its fate:
//!
//! | stored | in this document so far | raw hash | fate |
//! |---|---|---|---|
//! | no | — | — | **create** (build; new row and its provtillfällen) |
//! | yes | not seen | equal | **unchanged**: nothing is built, checked or written |
//! | yes | not seen | differs | **compare**: build; equal content writes only the new raw hash, other content **replaces** the provtillfällen |
//! | yes | written | — | **append** after what the document wrote; settled at [`finish`](settle) |
//! | yes | found unchanged | — | **grow**: append after the stored set; settled at the end |
//! | any | held back | — | **held**: quarantined, nothing written |
//!
//! A key with an element that breaks the XSD is **held back** for the rest of the document:
//! every element of it is quarantined (the rows name the key), what is stored stays, and if the
//! document had written the key in an earlier batch, that is undone ([`Write::Restore`]).
//!
//! Keys found unchanged cost no write at all: they are remembered in memory by id (up to a cap,
//! past which they spill into the document's tracking table). Written keys are tracked in that
//! table (`doc_tracking`, one row per key the document wrote): the content hash before the
//! document, how many provtillfällen and elements they hold, the `change_log` operation decided
//! for them, and for a key several batches wrote, the raw hash of its elements so far. A key's
//! `provomrade` row always holds its current hashes (a replaced key's are written with its new
//! provtillfällen), except for a key several batches wrote, whose hashes are settled at the end.
//! Counts are kept here, in [`DocState::summary`], as each key's outcome is decided or revised.
//!
//! The raw hash of a key's set is a chain over its elements' raw hashes in document order (the
//! hash itself for a single element), so a set that arrives split across batches can be hashed
//! incrementally, holding 32 bytes between batches.

use std::collections::{HashMap, HashSet};
use std::hash::BuildHasherDefault;

use sha2::{Digest, Sha256};

use super::ApplySummary;
use crate::domain::{
    ContentHash, ContentHasher, ProvomradeKey, Provtillfalle, Text, EMPTY_CONTENT_SHA256,
};
use crate::xml::{
    build_element, Built, DocContext, DocumentError, Element, ElementStats, Location, Quarantined,
    RawHash, RecordError,
};

/// A key in 128 bits, for remembering keys held back without their text.
pub type Fingerprint = u128;

/// Keys found unchanged remembered in memory per document (16 bytes or so each); past this many
/// they spill into the tracking table, so memory stays bounded whatever the document.
pub const UNCHANGED_IN_MEMORY: usize = 1 << 18;
/// Keys held back remembered in memory per document; past this many they spill too.
pub const HELD_IN_MEMORY: usize = 1 << 16;

/// The error code of an element quarantined because another element of its key broke the XSD.
pub const HELD_CODE: &str = "key_held";
/// The error code of the row that records elements of a held key the document had applied.
pub const WITHDRAWN_CODE: &str = "key_withdrawn";

// ---- Operations, outcomes, hashes ---------------------------------------------------------------

/// A `change_log` operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Upsert,
    Clear,
}

impl Op {
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Upsert => "upsert",
            Op::Clear => "clear",
        }
    }

    /// Reads the column back.
    pub fn parse(s: &str) -> Option<Op> {
        match s {
            "upsert" => Some(Op::Upsert),
            "clear" => Some(Op::Clear),
            _ => None,
        }
    }
}

/// What a key's content became, relative to before the document.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Changed,
    Cleared,
    Unchanged,
}

/// The outcome of a key whose content hash was `prev` before the document (`None`: it did not
/// exist) and is `new` after it.
pub fn outcome(prev: Option<&str>, new: &str) -> Outcome {
    if prev == Some(new) {
        Outcome::Unchanged
    } else if new == EMPTY_CONTENT_SHA256 {
        Outcome::Cleared
    } else {
        Outcome::Changed
    }
}

impl Outcome {
    pub fn op(self) -> Option<Op> {
        match self {
            Outcome::Changed => Some(Op::Upsert),
            Outcome::Cleared => Some(Op::Clear),
            Outcome::Unchanged => None,
        }
    }

    fn of_op(op: Option<Op>) -> Outcome {
        match op {
            Some(Op::Upsert) => Outcome::Changed,
            Some(Op::Clear) => Outcome::Cleared,
            None => Outcome::Unchanged,
        }
    }
}

/// The raw hash of a key's set: the first element's own hash, then each further element chained
/// on.
pub fn chain(so_far: Option<&RawHash>, next: &RawHash) -> RawHash {
    match so_far {
        None => *next,
        Some(prev) => {
            let mut h = Sha256::new();
            h.update(b"nprov-sync/raw-chain/v1\0");
            h.update(prev);
            h.update(next);
            h.finalize().into()
        }
    }
}

/// A key's fingerprint: the first 128 bits of SHA-256 over its parts, each length-prefixed.
pub fn fingerprint(key: &ProvomradeKey) -> Fingerprint {
    let mut h = Sha256::new();
    let mut field = |b: &[u8]| {
        h.update((b.len() as u64).to_le_bytes());
        h.update(b);
    };
    field(key.elev.as_bytes());
    field(key.omrade.kind().as_bytes());
    field(key.omrade.amne().unwrap_or_default().as_bytes());
    field(&[key.omrade.arskurs().map_or(0, |a| a.get())]);
    field(key.omrade.kurs().unwrap_or_default().as_bytes());
    let d = h.finalize();
    let mut first = [0u8; 16];
    first.copy_from_slice(&d[..16]);
    u128::from_le_bytes(first)
}

// ---- What is stored, and what the document did to a key -----------------------------------------

/// This document's tracking of a key (its `doc_touched` row).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Touched {
    /// `false`: the key was found unchanged (a row only once memory was full) and not written.
    pub written: bool,
    /// The content hash before the document; `None` when the document created the key.
    pub prev_content: Option<ContentHash>,
    /// The raw hash of the key's elements applied so far, for a key several batches wrote (for
    /// the others the `provomrade` row holds it).
    pub raw: Option<RawHash>,
    /// Provtillfällen stored for the key now: the ordinal its next element starts at.
    pub children: i64,
    /// Elements of the key this document applied.
    pub elements: i64,
    /// Written by more than one batch: its content hash and outcome are settled at the end.
    pub settle: bool,
    /// The `change_log` operation decided for the key so far.
    pub op: Option<Op>,
}

/// A raw hash read back from its column (32 bytes); `None` for anything else, which is then
/// treated as no raw hash (the key is compared by content).
pub fn raw_from_bytes(bytes: &[u8]) -> Option<RawHash> {
    RawHash::try_from(bytes).ok()
}

/// What the lookup finds for a key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stored {
    pub id: i64,
    /// Whether the stored raw hash equals the batch's raw hash of the key (compared by the
    /// lookup, so that an unchanged key's hashes need not travel).
    pub raw_matches: bool,
    /// The stored content hash; the lookup may leave it out when the raw hash matches and the
    /// document has not tracked the key (then the content is that of the batch's elements).
    pub content: Option<ContentHash>,
    /// The stored raw hash; `None` for a row stored before raw hashes were kept, or left out
    /// as `content` is.
    pub raw: Option<RawHash>,
    pub touched: Option<Touched>,
}

/// A key's elements in one batch, in document order.
#[derive(Clone, Debug)]
pub struct Group {
    pub key: ProvomradeKey,
    pub elements: Vec<Element>,
}

impl Group {
    /// The raw hash of this batch's elements of the key, chained onto `so_far`.
    pub fn raw_after(&self, so_far: Option<&RawHash>) -> RawHash {
        let mut raw = so_far.copied();
        for e in &self.elements {
            raw = Some(chain(raw.as_ref(), &e.raw_sha256));
        }
        raw.expect("a group has at least one element")
    }
}

// ---- Batches of elements ------------------------------------------------------------------------

/// Caps on one batch: keys (statement sizes), elements (a key repeated many times still
/// flushes) and raw bytes (memory).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchLimits {
    pub keys: usize,
    pub elements: usize,
    pub bytes: usize,
}

/// The elements gathered for the next flush, grouped by key.
#[derive(Debug)]
pub struct Batch<S = std::collections::hash_map::RandomState> {
    limits: BatchLimits,
    groups: Vec<Group>,
    /// The first group of each key hash (equal hashes are told apart by the key itself), so the
    /// key is not copied into the index. The hashes are already SipHash under this batch's own
    /// random key, so the index uses them as they are rather than hashing them again.
    index: HashMap<u64, usize, BuildHasherDefault<Prehashed>>,
    /// Per group, the next group whose key has the same hash ([`NO_GROUP`] for none): a chain
    /// in place of a list per hash, which would be an allocation per key.
    same_hash: Vec<usize>,
    hasher: S,
    elements: usize,
    bytes: usize,
}

/// The end of a [`Batch::same_hash`] chain.
const NO_GROUP: usize = usize::MAX;

/// A hasher for keys that are hashes already: a `u64` is its own hash.
#[derive(Default)]
struct Prehashed(u64);

impl std::hash::Hasher for Prehashed {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }

    /// Only `u64`s are hashed here; anything else is folded in, so it still hashes.
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
}

impl Batch {
    pub fn new(limits: BatchLimits) -> Batch {
        Batch::with_hasher(limits, Default::default())
    }
}

impl<S: std::hash::BuildHasher> Batch<S> {
    /// A batch whose keys are hashed by `hasher` (tests give one under which keys collide).
    pub fn with_hasher(limits: BatchLimits, hasher: S) -> Batch<S> {
        // The index and its chains are sized for a full batch once, and kept across batches
        // (cleared, not dropped): a document's first batch would otherwise grow the index step
        // by step, rehashing every key each time. The groups leave with each batch, so they
        // grow as they come rather than reserving a full batch that a small document never fills.
        Batch {
            limits,
            groups: Vec::new(),
            index: HashMap::with_capacity_and_hasher(limits.keys, Default::default()),
            same_hash: Vec::with_capacity(limits.keys),
            hasher,
            elements: 0,
            bytes: 0,
        }
    }

    /// Adds an element to its key's group; `true` when the batch is full and should be flushed.
    pub fn push(&mut self, e: Element) -> bool {
        self.elements += 1;
        self.bytes += e.raw.len();
        let h = self.hasher.hash_one(&e.key);
        let next = self.groups.len();
        let mut at = *self.index.entry(h).or_insert(next);
        loop {
            if at == next {
                // The key's first element in this batch (a new hash, or the end of the chain).
                self.same_hash.push(NO_GROUP);
                self.groups.push(Group {
                    key: e.key.clone(),
                    elements: vec![e],
                });
                break;
            }
            if self.groups[at].key == e.key {
                // A later element of a key in this batch (split skolformer): it joins that key.
                self.groups[at].elements.push(e);
                break;
            }
            if self.same_hash[at] == NO_GROUP {
                // Another key with the same hash: chained after the last one.
                self.same_hash[at] = next;
            }
            at = self.same_hash[at];
        }
        self.groups.len() >= self.limits.keys
            || self.elements >= self.limits.elements
            || self.bytes >= self.limits.bytes
    }

    pub fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }

    pub fn take(&mut self) -> Vec<Group> {
        self.index.clear();
        self.same_hash.clear();
        self.elements = 0;
        self.bytes = 0;
        std::mem::take(&mut self.groups)
    }
}

// ---- The document's state across batches --------------------------------------------------------

/// What a document has done so far, beyond what its tracking table holds.
#[derive(Debug)]
pub struct DocState {
    /// Ids of keys found unchanged (and so not in the tracking table).
    unchanged: HashSet<i64>,
    unchanged_cap: usize,
    /// Keys held back (in memory; more are in the tracking store once `held_spilled`).
    held: HashSet<Fingerprint>,
    held_cap: usize,
    held_spilled: bool,
    /// Whether any tracking row was written (else there is nothing to settle or log).
    tracked: bool,
    pub summary: ApplySummary,
}

impl Default for DocState {
    fn default() -> Self {
        DocState::with_caps(UNCHANGED_IN_MEMORY, HELD_IN_MEMORY)
    }
}

impl DocState {
    /// A document's state with the given memory caps (small ones in tests exercise spilling).
    pub fn with_caps(unchanged_cap: usize, held_cap: usize) -> DocState {
        DocState {
            unchanged: HashSet::new(),
            unchanged_cap,
            held: HashSet::new(),
            held_cap,
            held_spilled: false,
            tracked: false,
            summary: ApplySummary::default(),
        }
    }

    /// Whether the document wrote any tracking row.
    pub fn tracked(&self) -> bool {
        self.tracked
    }

    /// Whether a key is known to be held back, from memory alone.
    pub fn held_in_memory(&self, fp: Fingerprint) -> bool {
        self.held.contains(&fp)
    }

    /// Whether any key is held back in this document.
    pub fn any_held(&self) -> bool {
        !self.held.is_empty() || self.held_spilled
    }

    /// Whether some held keys are only in the tracking store (the caller must ask it too).
    pub fn held_spilled(&self) -> bool {
        self.held_spilled
    }

    fn count(&mut self, o: Outcome, by: i64) {
        let s = &mut self.summary;
        let field = match o {
            Outcome::Changed => &mut s.changed,
            Outcome::Cleared => &mut s.cleared,
            Outcome::Unchanged => &mut s.unchanged,
        };
        *field = field.saturating_add_signed(by);
    }

    /// Remembers a key found unchanged; `true` when it had to spill into the tracking table.
    fn mark_unchanged(&mut self, id: i64) -> bool {
        if self.unchanged.len() < self.unchanged_cap {
            self.unchanged.insert(id);
            false
        } else {
            true
        }
    }

    /// Remembers a held key; `true` when it had to spill.
    fn hold(&mut self, fp: Fingerprint) -> bool {
        if self.held.contains(&fp) {
            return false;
        }
        if self.held.len() < self.held_cap {
            self.held.insert(fp);
            false
        } else {
            self.held_spilled = true;
            true
        }
    }

    /// A key settled at the end: its final outcome is counted, its `change_log` op returned.
    pub fn settle(&mut self, prev: Option<&str>, new: &str) -> Option<Op> {
        let o = outcome(prev, new);
        self.count(o, 1);
        o.op()
    }
}

// ---- Deciding a key's fate ----------------------------------------------------------------------

/// A group's fate, before anything is built.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Held back earlier in this document: quarantined, nothing written.
    Held,
    /// Not stored: a new key.
    Create,
    /// Stored with the same raw hash: nothing to do.
    Unchanged { id: i64 },
    /// Stored with another raw hash (or none): build, then compare by content.
    Compare { id: i64, content: ContentHash },
    /// Written earlier in this document: the elements go after what it wrote. `raw`: the row's
    /// raw hash (that of what was written, unless `touched` has a later one).
    Append {
        id: i64,
        touched: Touched,
        raw: Option<RawHash>,
    },
    /// Found unchanged earlier in this document: the elements go after the stored set (whose
    /// size the caller looks up, see [`children_needed`]).
    Grow {
        id: i64,
        /// `None`: the stored set has this batch's raw hash, and so its content.
        content: Option<ContentHash>,
        raw: Option<RawHash>,
        spilled: bool,
    },
}

impl Decision {
    fn needs_build(&self) -> bool {
        match self {
            Decision::Held | Decision::Unchanged { .. } => false,
            Decision::Create
            | Decision::Compare { .. }
            | Decision::Append { .. }
            | Decision::Grow { .. } => true,
        }
    }
}

/// Whether a key is held back in this document: in memory, or as the tracking store says once
/// held keys spilled there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hold {
    HeldBack,
    Free,
}

impl Hold {
    pub fn of(held: bool) -> Hold {
        if held {
            Hold::HeldBack
        } else {
            Hold::Free
        }
    }
}

/// Picks a group's fate from what is stored, what the document did so far, and whether the key
/// is held back.
pub fn decide(state: &DocState, group: &Group, stored: Option<&Stored>, hold: Hold) -> Decision {
    match hold {
        Hold::HeldBack => return Decision::Held,
        Hold::Free => {}
    }
    let Some(s) = stored else {
        return Decision::Create;
    };
    match &s.touched {
        Some(t) if t.written => Decision::Append {
            id: s.id,
            touched: t.clone(),
            raw: s.raw,
        },
        Some(_) => Decision::Grow {
            id: s.id,
            content: s.content.clone(),
            raw: s.raw,
            spilled: true,
        },
        None if state.unchanged.contains(&s.id) => Decision::Grow {
            id: s.id,
            content: s.content.clone(),
            raw: if s.raw_matches {
                Some(group.raw_after(None))
            } else {
                s.raw
            },
            spilled: false,
        },
        None if s.raw_matches => Decision::Unchanged { id: s.id },
        None => Decision::Compare {
            id: s.id,
            content: s.content.clone().unwrap_or_default(),
        },
    }
}

/// The keys whose stored provtillfällen must be counted before [`plan`] (those that grow).
pub fn children_needed(decisions: &[Decision]) -> Vec<i64> {
    decisions
        .iter()
        .filter_map(|d| match d {
            Decision::Grow { id, .. } => Some(*id),
            Decision::Held
            | Decision::Create
            | Decision::Unchanged { .. }
            | Decision::Compare { .. }
            | Decision::Append { .. } => None,
        })
        .collect()
}

// ---- The writes ---------------------------------------------------------------------------------

/// Where rows go: a key this batch creates (the `i`-th key its [`Write::InsertKeys`] insert,
/// counted over them in order), or a stored one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    New(usize),
    Id(i64),
}

/// A `provomrade` row to insert.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewKey {
    pub key: ProvomradeKey,
    pub content: ContentHash,
    pub raw: RawHash,
}

/// Provtillfällen to insert for one key, with the skolform of the element each came in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Children {
    pub target: Target,
    pub first_ordinal: i64,
    pub rows: Vec<(Text, Provtillfalle)>,
}

/// A tracking row to insert or replace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Track {
    pub target: Target,
    pub touched: Touched,
}

/// A quarantine row, one per distinct element of the batch (with how often it came).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QuarantineRow {
    pub key: Option<ProvomradeKey>,
    pub elev: Option<String>,
    pub error_code: &'static str,
    pub reason: String,
    pub element: String,
    pub location: Location,
    /// `None` for the row that records withdrawn elements, whose bytes are gone.
    pub raw_xml: Option<String>,
    pub raw_sha256: RawHash,
    pub times: u64,
}

impl QuarantineRow {
    fn of(q: Quarantined) -> QuarantineRow {
        QuarantineRow {
            elev: q.error.elev.clone(),
            key: q.key,
            error_code: q.error.kind.code(),
            reason: q.error.to_string(),
            element: q.error.element.clone(),
            location: q.error.location,
            raw_xml: Some(q.raw),
            raw_sha256: q.raw_sha256,
            times: 1,
        }
    }
}

/// One write of a batch. [`plan`] emits a batch's writes in the one order that is correct, and
/// a backend executes them in that order: it may split a write into several statements or stream
/// it (PostgreSQL's COPY), never reorder writes.
///
/// The order, and why:
/// 1. [`Write::Restore`] first: a key held back is put back as committed, tracking row too, before
///    anything else of the batch could read or extend what the document had written to it.
/// 2. [`Write::Untrack`]: spilled tracking rows of keys now held back go before the batch tracks
///    anything.
/// 3. [`Write::DeleteChildren`] before [`Write::InsertChildren`]: a replaced set goes before its
///    new rows come (the same ordinals).
/// 4. [`Write::InsertKeys`] before [`Write::InsertChildren`]: parents before children (the foreign
///    key).
/// 5. [`Write::Replace`], then the tracking writes ([`Write::Track`], [`Write::TrackUnchanged`]),
///    [`Write::Rehash`], [`Write::TrackHeld`] and [`Write::Quarantine`] last: they touch only rows
///    the earlier writes leave in place.
#[derive(Debug)]
pub enum Write {
    /// Keys the document wrote in an earlier batch and now holds back: put back as committed
    /// before the document (their tracking rows go too).
    Restore(Vec<i64>),
    /// Spilled tracking rows of keys now held back, dropped.
    Untrack(Vec<i64>),
    /// Keys whose stored provtillfällen (and their delprovsresultat) are replaced: deleted.
    DeleteChildren(Vec<i64>),
    /// New provområden, with the document's time as `changed_at` and its namespace.
    InsertKeys(Vec<NewKey>),
    /// Provtillfällen and their delprovsresultat, each key's rows from its `first_ordinal` on.
    InsertChildren(Vec<Children>),
    /// Keys whose content was replaced: their new content and raw hash (and the document's time as
    /// `changed_at`, and its namespace).
    Replace(Vec<(i64, ContentHash, RawHash)>),
    /// Tracking rows, inserted or replaced.
    Track(Vec<Track>),
    /// Tracking rows of keys found unchanged, once memory is full (no other column matters); a
    /// key already tracked keeps its row.
    TrackUnchanged(Vec<i64>),
    /// Keys unchanged by content whose raw hash (and namespace) is written anew: after a change of
    /// serialisation or schema version, once per key, so the next read skips them.
    Rehash(Vec<(i64, RawHash)>),
    /// Held keys that did not fit in memory, for the tracking store.
    TrackHeld(Vec<Fingerprint>),
    /// One row per distinct element of the batch, inserted or counted again.
    Quarantine(Vec<QuarantineRow>),
}

/// What one batch writes ([`Write`]s in order, none empty), and what building noticed.
#[derive(Debug)]
pub struct BatchPlan {
    pub writes: Vec<Write>,
    /// Provområde rows the writes insert (the ids a backend reserves for [`Target::New`]).
    pub new_keys: usize,
    /// Provtillfällen and delprovsresultat rows the writes insert.
    pub child_rows: (u64, u64),
    /// What building noticed, per element built (not skipped by its raw hash) and applied; as
    /// many are counted in [`ApplySummary::built`].
    pub built: Vec<ElementStats>,
}

impl BatchPlan {
    /// The quarantine rows this plan writes.
    pub fn quarantined(&self) -> impl Iterator<Item = &QuarantineRow> {
        self.writes.iter().flat_map(|w| match w {
            Write::Quarantine(q) => q.as_slice(),
            Write::Restore(_)
            | Write::Untrack(_)
            | Write::DeleteChildren(_)
            | Write::InsertKeys(_)
            | Write::InsertChildren(_)
            | Write::Replace(_)
            | Write::Track(_)
            | Write::TrackUnchanged(_)
            | Write::Rehash(_)
            | Write::TrackHeld(_) => &[],
        })
    }
}

/// A batch's writes gathered by kind while its groups are decided, then put in order once
/// ([`Pending::into_plan`]).
#[derive(Default)]
struct Pending {
    restores: Vec<i64>,
    untrack: Vec<i64>,
    deletes: Vec<i64>,
    creates: Vec<NewKey>,
    children: Vec<Children>,
    replaced: Vec<(i64, ContentHash, RawHash)>,
    tracks: Vec<Track>,
    spill_unchanged: Vec<i64>,
    rehash: Vec<(i64, RawHash)>,
    spill_held: Vec<Fingerprint>,
    quarantine: Vec<QuarantineRow>,
}

impl Pending {
    /// The plan: the writes in the order [`Write`] explains, leaving out the empty ones.
    fn into_plan(self, built: Vec<ElementStats>) -> BatchPlan {
        let new_keys = self.creates.len();
        let rows = self.children.iter().flat_map(|c| &c.rows);
        let child_rows = (
            rows.clone().count() as u64,
            rows.map(|(_, p)| p.resultat.delprovsresultat().len() as u64)
                .sum(),
        );
        let Pending {
            restores,
            untrack,
            deletes,
            creates,
            children,
            replaced,
            tracks,
            spill_unchanged,
            rehash,
            spill_held,
            quarantine,
        } = self;
        let mut out = Vec::new();
        let mut push = |empty: bool, w: Write| {
            if !empty {
                out.push(w);
            }
        };
        push(restores.is_empty(), Write::Restore(restores));
        push(untrack.is_empty(), Write::Untrack(untrack));
        push(deletes.is_empty(), Write::DeleteChildren(deletes));
        push(creates.is_empty(), Write::InsertKeys(creates));
        push(children.is_empty(), Write::InsertChildren(children));
        push(replaced.is_empty(), Write::Replace(replaced));
        push(tracks.is_empty(), Write::Track(tracks));
        push(
            spill_unchanged.is_empty(),
            Write::TrackUnchanged(spill_unchanged),
        );
        push(rehash.is_empty(), Write::Rehash(rehash));
        push(spill_held.is_empty(), Write::TrackHeld(spill_held));
        push(quarantine.is_empty(), Write::Quarantine(quarantine));
        BatchPlan {
            writes: out,
            new_keys,
            child_rows,
            built,
        }
    }
}

// ---- Planning a batch ---------------------------------------------------------------------------

/// Decides every group of a batch and produces its writes, building the elements that need it.
///
/// `stored` and `decisions` are in group order; `children` holds the stored provtillfällen count
/// of every key [`children_needed`] named; `loose` are elements quarantined by the scanner
/// itself (they name no key).
///
/// # Errors
/// A document error from building an element again, which bytes the scanner accepted cannot
/// produce.
pub fn plan(
    state: &mut DocState,
    ctx: &DocContext,
    groups: Vec<Group>,
    decisions: Vec<Decision>,
    children: &HashMap<i64, i64>,
    loose: Vec<Quarantined>,
) -> Result<BatchPlan, DocumentError> {
    let mut p = Pending::default();
    let mut stats = Vec::new();
    state.summary.quarantined += loose.len() as u64;
    let mut quarantine: Vec<QuarantineRow> = loose.into_iter().map(QuarantineRow::of).collect();
    for (mut group, decision) in groups.into_iter().zip(decisions) {
        let n = group.elements.len() as i64;
        if let Decision::Unchanged { id } = decision {
            state.count(Outcome::Unchanged, 1);
            state.summary.records += n as u64;
            if state.mark_unchanged(id) {
                p.spill_unchanged.push(id);
            }
            continue;
        }
        // Everything else is built, except the elements of a held key.
        let built = if decision.needs_build() {
            let mut built = Vec::with_capacity(group.elements.len());
            for e in &mut group.elements {
                built.push(match e.built.take() {
                    Some(b) => b,
                    None => build_element(&e.raw, e.location, ctx)?,
                });
            }
            Some(built)
        } else {
            None
        };
        let failed = built.as_ref().is_some_and(|b| b.iter().any(|r| r.is_err()));
        if decision == Decision::Held || failed {
            hold(state, &mut p, &mut quarantine, group, built, &decision);
            continue;
        }
        state.summary.records += n as u64;
        state.summary.built += n as u64;
        let raw_so_far = match &decision {
            Decision::Append { touched, raw, .. } => touched.raw.or(*raw),
            Decision::Grow { raw, .. } => *raw,
            Decision::Held
            | Decision::Create
            | Decision::Unchanged { .. }
            | Decision::Compare { .. } => None,
        };
        let raw = group.raw_after(raw_so_far.as_ref());
        // The values move into the rows; what building noticed is kept for the report.
        let built: Vec<Built> = built.unwrap_or_default().into_iter().flatten().collect();
        // A key in one element: its set's hash came with it.
        let single = (built.len() == 1).then(|| built[0].content.clone());
        let mut rows: Vec<(Text, Provtillfalle)> = Vec::new();
        for b in built {
            stats.push(b.stats);
            let skolform = b.provomrade.skolform;
            rows.extend(
                b.provomrade
                    .provtillfallen
                    .into_iter()
                    .map(|pt| (skolform.clone(), pt)),
            );
        }
        let content = || {
            if let Some(c) = &single {
                return c.clone();
            }
            let mut h = ContentHasher::new();
            for (skolform, pt) in &rows {
                h.push(skolform, pt);
            }
            h.finish()
        };
        let added = rows.len() as i64;
        match decision {
            Decision::Create => {
                let content = content();
                let o = outcome(None, &content);
                state.count(o, 1);
                let target = Target::New(p.creates.len());
                p.tracks.push(Track {
                    target,
                    touched: Touched {
                        written: true,
                        prev_content: None,
                        raw: None,
                        children: added,
                        elements: n,
                        settle: false,
                        op: o.op(),
                    },
                });
                p.creates.push(NewKey {
                    key: group.key,
                    content,
                    raw,
                });
                p.children.push(Children {
                    target,
                    first_ordinal: 0,
                    rows,
                });
            }
            Decision::Compare {
                id,
                content: stored,
            } => {
                let content = content();
                let o = outcome(Some(&stored), &content);
                state.count(o, 1);
                if o == Outcome::Unchanged {
                    // Same content in other bytes: only the raw hash moves, so the next read of
                    // these bytes skips them.
                    p.rehash.push((id, raw));
                    if state.mark_unchanged(id) {
                        p.spill_unchanged.push(id);
                    }
                    continue;
                }
                p.deletes.push(id);
                p.replaced.push((id, content, raw));
                p.tracks.push(Track {
                    target: Target::Id(id),
                    touched: Touched {
                        written: true,
                        prev_content: Some(stored),
                        raw: None,
                        children: added,
                        elements: n,
                        settle: false,
                        op: o.op(),
                    },
                });
                p.children.push(Children {
                    target: Target::Id(id),
                    first_ordinal: 0,
                    rows,
                });
            }
            Decision::Append { id, touched, .. } => {
                if !touched.settle {
                    // What was counted for the key is revised when it is settled.
                    state.count(Outcome::of_op(touched.op), -1);
                }
                p.children.push(Children {
                    target: Target::Id(id),
                    first_ordinal: touched.children,
                    rows,
                });
                p.tracks.push(Track {
                    target: Target::Id(id),
                    touched: Touched {
                        raw: Some(raw),
                        children: touched.children + added,
                        elements: touched.elements + n,
                        settle: true,
                        ..touched
                    },
                });
            }
            Decision::Grow {
                id,
                content: stored,
                spilled,
                ..
            } => {
                // The stored set is what this document found unchanged: its content is the
                // one stored, or (when the lookup left it out) that of these very bytes.
                let prev = stored.unwrap_or_else(content);
                state.count(Outcome::Unchanged, -1);
                if !spilled {
                    state.unchanged.remove(&id);
                }
                let stored_children = children.get(&id).copied().unwrap_or(0);
                p.children.push(Children {
                    target: Target::Id(id),
                    first_ordinal: stored_children,
                    rows,
                });
                p.tracks.push(Track {
                    target: Target::Id(id),
                    touched: Touched {
                        written: true,
                        prev_content: Some(prev),
                        raw: Some(raw),
                        children: stored_children + added,
                        elements: n,
                        settle: true,
                        op: None,
                    },
                });
            }
            // Both went on above; `hold` and the early `continue` are their whole treatment.
            Decision::Held | Decision::Unchanged { .. } => continue,
        }
    }
    p.quarantine = merge_quarantine(quarantine);
    state.tracked |= !p.tracks.is_empty() || !p.spill_unchanged.is_empty();
    Ok(p.into_plan(stats))
}

/// Holds a key back: every element of the group to quarantine, and whatever the document did to
/// the key undone.
fn hold(
    state: &mut DocState,
    p: &mut Pending,
    quarantine: &mut Vec<QuarantineRow>,
    group: Group,
    built: Option<Vec<Result<Built, RecordError>>>,
    decision: &Decision,
) {
    let fp = fingerprint(&group.key);
    if state.hold(fp) {
        p.spill_held.push(fp);
    }
    let first = group
        .elements
        .first()
        .map(|e| e.location)
        .unwrap_or_default();
    let broken = built
        .as_ref()
        .and_then(|b| b.iter().find_map(|r| r.as_ref().err()))
        .map(|e| e.location);
    let held_reason = |elev: &str| {
        match broken {
        Some(at) => format!(
            "another element of this key (elev {elev}) breaks the XSD at {at}: the key keeps what was stored"
        ),
        None => format!(
            "an earlier element of this key (elev {elev}) in this document broke the XSD: the key keeps what was stored"
        ),
    }
    };
    let element_name = |key: &ProvomradeKey| match key.omrade {
        crate::domain::Omrade::Amne { .. } => "ämnesresultat",
        crate::domain::Omrade::Kurs { .. } => "kursresultat",
    };
    state.summary.quarantined += group.elements.len() as u64;
    for (i, e) in group.elements.iter().enumerate() {
        // Its own error when it was built (now, or by the scanner ahead of time).
        let own = built
            .as_ref()
            .and_then(|b| b[i].as_ref().err())
            .or_else(|| e.built.as_ref().and_then(|b| b.as_ref().err()));
        quarantine.push(match own {
            Some(err) => QuarantineRow {
                key: Some(group.key.clone()),
                elev: err.elev.clone(),
                error_code: err.kind.code(),
                reason: err.to_string(),
                element: err.element.clone(),
                location: err.location,
                raw_xml: Some(String::from_utf8_lossy(&e.raw).into_owned()),
                raw_sha256: e.raw_sha256,
                times: 1,
            },
            None => QuarantineRow {
                key: Some(group.key.clone()),
                elev: Some(group.key.elev.clone()),
                error_code: HELD_CODE,
                reason: held_reason(&group.key.elev),
                element: element_name(&group.key).into(),
                location: e.location,
                raw_xml: Some(String::from_utf8_lossy(&e.raw).into_owned()),
                raw_sha256: e.raw_sha256,
                times: 1,
            },
        });
    }
    match decision {
        Decision::Append { id, touched, .. } => {
            if !touched.settle {
                state.count(Outcome::of_op(touched.op), -1);
            }
            // The elements applied before are not applied after all.
            let withdrawn = touched.elements as u64;
            state.summary.records = state.summary.records.saturating_sub(withdrawn);
            state.summary.quarantined += withdrawn;
            p.restores.push(*id);
            // One row for the elements the document had applied: their bytes are gone.
            let mut h = Sha256::new();
            h.update(b"nprov-sync/withdrawn/v1\0");
            h.update(fp.to_le_bytes());
            quarantine.push(QuarantineRow {
                key: Some(group.key.clone()),
                elev: Some(group.key.elev.clone()),
                error_code: WITHDRAWN_CODE,
                reason: format!(
                    "{} earlier element(s) of this key (elev {}) in this document had been applied and were withdrawn: the key keeps what was stored",
                    touched.elements, group.key.elev
                ),
                element: element_name(&group.key).into(),
                location: first,
                raw_xml: None,
                raw_sha256: h.finalize().into(),
                times: 1,
            });
        }
        Decision::Grow { id, spilled, .. } => {
            // Found unchanged before: nothing was written, the count is taken back.
            state.count(Outcome::Unchanged, -1);
            if *spilled {
                p.untrack.push(*id);
            } else {
                state.unchanged.remove(id);
            }
        }
        // Nothing of the key was written or counted yet: its elements' quarantine rows are all.
        Decision::Held
        | Decision::Create
        | Decision::Unchanged { .. }
        | Decision::Compare { .. } => {}
    }
}

/// One row per distinct element (by raw hash), with how often it came.
fn merge_quarantine(rows: Vec<QuarantineRow>) -> Vec<QuarantineRow> {
    let mut out: Vec<QuarantineRow> = Vec::with_capacity(rows.len());
    let mut at: HashMap<RawHash, usize> = HashMap::new();
    for r in rows {
        match at.get(&r.raw_sha256) {
            Some(&i) => out[i].times += r.times,
            None => {
                at.insert(r.raw_sha256, out.len());
                out.push(r);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    //! The core driven through whole documents against a model of the tables: the same loop
    //! the shell runs (batch, look up, decide, plan, write; settle and log at the end), with the
    //! writes applied to maps instead of SQL. Batches are tiny, so every fate across batches
    //! shows up in a few elements.

    use std::collections::{BTreeMap, HashMap, HashSet};

    use super::*;

    /// A write's place in [`Write`]'s documented order, and whether it is empty.
    fn rank(w: &Write) -> (u8, bool) {
        match w {
            Write::Restore(v) => (0, v.is_empty()),
            Write::Untrack(v) => (1, v.is_empty()),
            Write::DeleteChildren(v) => (2, v.is_empty()),
            Write::InsertKeys(v) => (3, v.is_empty()),
            Write::InsertChildren(v) => (4, v.is_empty()),
            Write::Replace(v) => (5, v.is_empty()),
            Write::Track(v) => (6, v.is_empty()),
            Write::TrackUnchanged(v) => (7, v.is_empty()),
            Write::Rehash(v) => (8, v.is_empty()),
            Write::TrackHeld(v) => (9, v.is_empty()),
            Write::Quarantine(v) => (10, v.is_empty()),
        }
    }
    use crate::domain::{
        Delprovsresultat, Omrade, Provomrade, ProvtillfalleResultat, Utfall, Varde,
    };
    use crate::xml::{Limits, Scanned, Scanner};

    #[derive(Clone, Debug, PartialEq)]
    struct Row {
        id: i64,
        content: ContentHash,
        raw: Option<RawHash>,
        children: Vec<(Text, Provtillfalle)>,
    }

    #[derive(Default)]
    struct Model {
        rows: BTreeMap<ProvomradeKey, Row>,
        next_id: i64,
        tracking: HashMap<i64, Touched>,
        held: HashSet<Fingerprint>,
        change_log: Vec<(String, Op)>,
        quarantine: BTreeMap<RawHash, (String, u64)>,
    }

    impl Model {
        fn by_id(&mut self, id: i64) -> &mut Row {
            self.rows
                .values_mut()
                .find(|r| r.id == id)
                .expect("a stored id")
        }

        fn lookup(&self, groups: &[Group]) -> Vec<Option<Stored>> {
            groups
                .iter()
                .map(|g| {
                    let row = self.rows.get(&g.key)?;
                    let touched = self.tracking.get(&row.id).cloned();
                    let raw_matches = row.raw == Some(g.raw_after(None));
                    let hide = raw_matches && touched.is_none();
                    Some(Stored {
                        id: row.id,
                        raw_matches,
                        content: (!hide).then(|| row.content.clone()),
                        raw: if hide { None } else { row.raw },
                        touched,
                    })
                })
                .collect()
        }

        fn write(&mut self, p: &BatchPlan, committed: &BTreeMap<ProvomradeKey, Row>) {
            let ranks: Vec<(u8, bool)> = p.writes.iter().map(rank).collect();
            assert!(
                ranks.windows(2).all(|w| w[0].0 < w[1].0),
                "writes in the documented order, each kind at most once: {ranks:?}"
            );
            assert!(ranks.iter().all(|r| !r.1), "no empty write: {ranks:?}");
            let first = self.next_id;
            let id_of = |t: Target| match t {
                Target::New(i) => first + 1 + i as i64,
                Target::Id(id) => id,
            };
            for w in &p.writes {
                match w {
                    Write::Restore(ids) => {
                        for id in ids {
                            let key = self
                                .rows
                                .iter()
                                .find(|(_, r)| r.id == *id)
                                .map(|(k, _)| k.clone())
                                .expect("restored key");
                            match committed.get(&key) {
                                Some(row) => {
                                    self.rows.insert(key, row.clone());
                                }
                                None => {
                                    self.rows.remove(&key);
                                }
                            }
                            self.tracking.remove(id);
                        }
                    }
                    Write::Untrack(ids) => {
                        for id in ids {
                            self.tracking.remove(id);
                        }
                    }
                    Write::DeleteChildren(ids) => {
                        for id in ids {
                            self.by_id(*id).children.clear();
                        }
                    }
                    Write::InsertKeys(keys) => {
                        for k in keys {
                            self.next_id += 1;
                            self.rows.insert(
                                k.key.clone(),
                                Row {
                                    id: self.next_id,
                                    content: k.content.clone(),
                                    raw: Some(k.raw),
                                    children: Vec::new(),
                                },
                            );
                        }
                    }
                    Write::InsertChildren(children) => {
                        for c in children {
                            let row = self.by_id(id_of(c.target));
                            assert_eq!(
                                row.children.len() as i64,
                                c.first_ordinal,
                                "ordinals run on"
                            );
                            row.children.extend(c.rows.iter().cloned());
                        }
                    }
                    Write::Replace(rows) => {
                        for (id, content, raw) in rows {
                            let row = self.by_id(*id);
                            row.content = content.clone();
                            row.raw = Some(*raw);
                        }
                    }
                    Write::Track(tracks) => {
                        for t in tracks {
                            self.tracking.insert(id_of(t.target), t.touched.clone());
                        }
                    }
                    Write::TrackUnchanged(ids) => {
                        for id in ids {
                            self.tracking.entry(*id).or_default();
                        }
                    }
                    Write::Rehash(rows) => {
                        for (id, raw) in rows {
                            self.by_id(*id).raw = Some(*raw);
                        }
                    }
                    Write::TrackHeld(fps) => self.held.extend(fps.iter().copied()),
                    Write::Quarantine(rows) => {
                        for q in rows {
                            let e = self
                                .quarantine
                                .entry(q.raw_sha256)
                                .or_insert((q.error_code.to_owned(), 0));
                            e.1 += q.times;
                        }
                    }
                }
            }
        }

        /// One document, applied as the shell applies it; `ahead`: the scanner builds.
        fn apply(
            &mut self,
            xml: &str,
            limits: BatchLimits,
            caps: (usize, usize),
            ahead: bool,
        ) -> ApplySummary {
            let committed = self.rows.clone();
            let mut scanner = Scanner::new(xml.as_bytes(), Limits::default()).expect("a document");
            scanner.set_build_ahead(ahead);
            let ctx = scanner.context().clone();
            let mut state = DocState::with_caps(caps.0, caps.1);
            let mut batch = Batch::new(limits);
            let mut loose = Vec::new();
            let flush = |model: &mut Model,
                         batch: &mut Batch,
                         loose: &mut Vec<Quarantined>,
                         state: &mut DocState| {
                let groups = batch.take();
                let held: Vec<bool> = groups
                    .iter()
                    .map(|g| {
                        let fp = fingerprint(&g.key);
                        state.held_in_memory(fp) || model.held.contains(&fp)
                    })
                    .collect();
                let stored = model.lookup(&groups);
                let decisions: Vec<Decision> = groups
                    .iter()
                    .zip(&stored)
                    .zip(&held)
                    .map(|((g, s), h)| decide(state, g, s.as_ref(), Hold::of(*h)))
                    .collect();
                let counts: HashMap<i64, i64> = children_needed(&decisions)
                    .into_iter()
                    .map(|id| (id, model.by_id(id).children.len() as i64))
                    .collect();
                let p = plan(
                    state,
                    &ctx,
                    groups,
                    decisions,
                    &counts,
                    std::mem::take(loose),
                )
                .expect("elements read again");
                model.write(&p, &committed);
            };
            while let Some(s) = scanner.next_element().expect("well-formed") {
                match s {
                    Scanned::Element(e) => {
                        if batch.push(e) {
                            flush(self, &mut batch, &mut loose, &mut state);
                        }
                    }
                    Scanned::Quarantined(q) => loose.push(q),
                }
            }
            flush(self, &mut batch, &mut loose, &mut state);
            // Settle, then log, as the shell does.
            let mut settle: Vec<i64> = self
                .tracking
                .iter()
                .filter(|(_, t)| t.written && t.settle)
                .map(|(id, _)| *id)
                .collect();
            settle.sort();
            for id in settle {
                let t = self.tracking[&id].clone();
                let row = self.by_id(id);
                let mut h = ContentHasher::new();
                for (s, pt) in &row.children {
                    h.push(s, pt);
                }
                let content = h.finish();
                row.content = content.clone();
                row.raw = t.raw;
                let op = state.settle(t.prev_content.as_deref(), &content);
                let t = self.tracking.get_mut(&id).expect("tracked");
                t.op = op;
                t.settle = false;
            }
            let mut ids: Vec<(i64, Op)> = self
                .tracking
                .iter()
                .filter_map(|(id, t)| t.op.filter(|_| t.written).map(|op| (*id, op)))
                .collect();
            ids.sort_by_key(|(id, _)| *id);
            for (id, op) in ids {
                let key = self
                    .rows
                    .iter()
                    .find(|(_, r)| r.id == id)
                    .map(|(k, _)| k.elev.clone())
                    .expect("logged key");
                self.change_log.push((key, op));
            }
            self.tracking.clear();
            self.held.clear();
            state.summary
        }

        /// Every row as text: elev, provområde, and its provtillfällen's skolform and betyg.
        fn dump(&self) -> Vec<String> {
            self.rows
                .iter()
                .map(|(k, r)| {
                    let pts: Vec<String> = r
                        .children
                        .iter()
                        .map(|(s, p)| {
                            format!("{s}:{}", p.resultat.sammanvagt_provbetyg().unwrap_or("-"))
                        })
                        .collect();
                    format!(
                        "{} {} [{}]",
                        k.elev,
                        k.omrade.kurs().unwrap_or("?"),
                        pts.join(" ")
                    )
                })
                .collect()
        }
    }

    /// Keys whose hashes collide are still told apart: with every key hashed alike, a batch
    /// groups the elements of each key, in the order the keys first came.
    #[test]
    fn a_batch_groups_keys_whose_hashes_collide() {
        #[derive(Default)]
        struct Collide;
        impl std::hash::Hasher for Collide {
            fn finish(&self) -> u64 {
                7
            }
            fn write(&mut self, _: &[u8]) {}
        }
        let xml = doc(&[
            element("a", "GY", &["A"]),
            element("b", "GY", &["B"]),
            element("a", "VUX", &["C"]),
            element("c", "GY", &["D"]),
            element("b", "VUX", &["E"]),
            element("a", "GY", &["F"]),
        ]);
        let mut scanner = Scanner::new(xml.as_bytes(), Limits::default()).expect("a document");
        scanner.set_build_ahead(true);
        let mut elements = Vec::new();
        while let Some(s) = scanner.next_element().expect("well-formed") {
            match s {
                Scanned::Element(e) => elements.push(e),
                Scanned::Quarantined(q) => panic!("nothing here breaks the XSD: {}", q.error),
            }
        }
        assert_eq!(elements.len(), 6);
        let limits = BatchLimits {
            keys: 100,
            elements: 100,
            bytes: 1 << 20,
        };
        let mut batch =
            Batch::with_hasher(limits, std::hash::BuildHasherDefault::<Collide>::default());
        // Twice: a batch taken starts again empty, its index and chains cleared with it.
        for _ in 0..2 {
            for e in &elements {
                assert!(!batch.push(e.clone()), "not full");
            }
            let groups = batch.take();
            assert!(batch.is_empty());
            // Each element by its place in the document (their raw hashes all differ).
            let place = |e: &Element| elements.iter().position(|x| x.raw_sha256 == e.raw_sha256);
            let seen: Vec<(&str, Vec<Option<usize>>)> = groups
                .iter()
                .map(|g| (&*g.key.elev, g.elements.iter().map(place).collect()))
                .collect();
            let at = |places: &[usize]| places.iter().copied().map(Some).collect::<Vec<_>>();
            assert_eq!(
                seen,
                [("a", at(&[0, 2, 5])), ("b", at(&[1, 4])), ("c", at(&[3]))]
            );
        }
    }

    fn element(elev: &str, skolform: &str, betyg: &[&str]) -> Provomrade {
        Provomrade {
            key: ProvomradeKey {
                elev: elev.into(),
                omrade: Omrade::Kurs { kurs: "K".into() },
            },
            skolform: skolform.to_owned().into(),
            provtillfallen: betyg
                .iter()
                .map(|b| Provtillfalle {
                    uppdaterat: chrono::NaiveDate::from_ymd_opt(2026, 1, 1).expect("a date"),
                    genomfort: None,
                    resultat: ProvtillfalleResultat::Resultat {
                        sammanvagt_provbetyg: Some(b.to_string().into()),
                        delprovsresultat: vec![Delprovsresultat {
                            typ: "A".into(),
                            utfall: Utfall::Resultat {
                                varde: Some(Varde::Betyg("A".into())),
                                maluppfyllnad: None,
                            },
                        }],
                    },
                })
                .collect(),
        }
    }

    fn doc(elements: &[Provomrade]) -> String {
        crate::simulate::render_to_string(
            crate::xml::version::newest(),
            "2026-01-01T00:00:00",
            "2026-01-02T00:00:00",
            elements,
        )
    }

    /// An element that breaks the XSD: a date that does not exist.
    fn broken(elev: &str) -> Provomrade {
        let mut p = element(elev, "GY", &["X"]);
        p.provtillfallen[0].uppdaterat = chrono::NaiveDate::from_ymd_opt(2026, 2, 28).expect("d");
        p
    }

    fn break_dates(xml: String) -> String {
        xml.replace("2026-02-28", "2026-02-30")
    }

    /// (changed, unchanged, cleared, quarantined, built)
    fn counts(s: &ApplySummary) -> (u64, u64, u64, u64, u64) {
        (s.changed, s.unchanged, s.cleared, s.quarantined, s.built)
    }

    struct Case {
        name: &'static str,
        /// Documents applied before, in order.
        before: Vec<String>,
        doc: String,
        /// Keys per batch (elements flush at four times that).
        keys_per_batch: usize,
        caps: (usize, usize),
        dump: Vec<&'static str>,
        counts: (u64, u64, u64, u64, u64),
        /// change_log entries the document adds.
        log: Vec<(&'static str, Op)>,
    }

    fn cases() -> Vec<Case> {
        let e1 = element("e1", "GY", &["A"]);
        let e1b = element("e1", "GY", &["B"]);
        let e1_gr = element("e1", "GR", &["C"]);
        let e2 = element("e2", "GY", &["A"]);
        let e3 = element("e3", "GY", &["A"]);
        let e1_empty = element("e1", "GY", &[]);
        let big = (1usize << 30, 1 << 30);
        let one = |v: &[&Provomrade]| doc(&v.iter().map(|p| (*p).clone()).collect::<Vec<_>>());
        vec![
            Case {
                name: "a new key is created and logged",
                before: vec![],
                doc: one(&[&e1]),
                keys_per_batch: 10,
                caps: big,
                dump: vec!["e1 K [GY:A]"],
                counts: (1, 0, 0, 0, 1),
                log: vec![("e1", Op::Upsert)],
            },
            Case {
                name: "unchanged bytes are skipped: nothing built, nothing written",
                before: vec![one(&[&e1])],
                doc: one(&[&e1]),
                keys_per_batch: 10,
                caps: big,
                dump: vec!["e1 K [GY:A]"],
                counts: (0, 1, 0, 0, 0),
                log: vec![],
            },
            Case {
                name: "other bytes, same content: unchanged, only the raw hash moves",
                before: vec![one(&[&e1])],
                doc: one(&[&e1]).replace("\t\t<provtillfälle", "  <provtillfälle"),
                keys_per_batch: 10,
                caps: big,
                dump: vec!["e1 K [GY:A]"],
                counts: (0, 1, 0, 0, 1),
                log: vec![],
            },
            Case {
                name: "changed content replaces the set",
                before: vec![one(&[&e1])],
                doc: one(&[&e1b]),
                keys_per_batch: 10,
                caps: big,
                dump: vec!["e1 K [GY:B]"],
                counts: (1, 0, 0, 0, 1),
                log: vec![("e1", Op::Upsert)],
            },
            Case {
                name: "an empty element clears the set",
                before: vec![one(&[&e1])],
                doc: one(&[&e1_empty]),
                keys_per_batch: 10,
                caps: big,
                dump: vec!["e1 K []"],
                counts: (0, 0, 1, 0, 1),
                log: vec![("e1", Op::Clear)],
            },
            Case {
                name: "the same element twice is a set of two",
                before: vec![],
                doc: one(&[&e1, &e1]),
                keys_per_batch: 10,
                caps: big,
                dump: vec!["e1 K [GY:A GY:A]"],
                counts: (1, 0, 0, 0, 2),
                log: vec![("e1", Op::Upsert)],
            },
            Case {
                name: "a key that shrinks loses what it no longer has",
                before: vec![one(&[&e1, &e1_gr])],
                doc: one(&[&e1]),
                keys_per_batch: 10,
                caps: big,
                dump: vec!["e1 K [GY:A]"],
                counts: (1, 0, 0, 0, 1),
                log: vec![("e1", Op::Upsert)],
            },
            Case {
                name: "a key whose later element arrives after a flush is one set",
                before: vec![],
                doc: one(&[&e1, &e2, &e1_gr]),
                keys_per_batch: 1,
                caps: big,
                dump: vec!["e1 K [GY:A GR:C]", "e2 K [GY:A]"],
                counts: (2, 0, 0, 0, 3),
                log: vec![("e1", Op::Upsert), ("e2", Op::Upsert)],
            },
            Case {
                name: "a key found unchanged early and changed later in the document",
                before: vec![one(&[&e1])],
                doc: one(&[&e1, &e2, &e1_gr]),
                keys_per_batch: 1,
                caps: big,
                dump: vec!["e1 K [GY:A GR:C]", "e2 K [GY:A]"],
                counts: (2, 0, 0, 0, 2),
                log: vec![("e1", Op::Upsert), ("e2", Op::Upsert)],
            },
            Case {
                name: "the same, once keys found unchanged spill out of memory",
                before: vec![one(&[&e1, &e3])],
                doc: one(&[&e3, &e1, &e2, &e1_gr]),
                keys_per_batch: 1,
                caps: (1, 1),
                dump: vec!["e1 K [GY:A GR:C]", "e2 K [GY:A]", "e3 K [GY:A]"],
                counts: (2, 1, 0, 0, 2),
                log: vec![("e1", Op::Upsert), ("e2", Op::Upsert)],
            },
            Case {
                name: "a set split far apart that did not change is unchanged and unlogged",
                before: vec![one(&[&e1, &e1_gr])],
                doc: one(&[&e1, &e2, &e1_gr]),
                keys_per_batch: 1,
                caps: big,
                dump: vec!["e1 K [GY:A GR:C]", "e2 K [GY:A]"],
                counts: (1, 1, 0, 0, 3),
                log: vec![("e2", Op::Upsert)],
            },
            Case {
                name:
                    "a key with a broken element keeps what is stored; all its elements quarantined",
                before: vec![one(&[&e1])],
                doc: break_dates(one(&[&e1b, &broken("e1"), &e2])),
                keys_per_batch: 10,
                caps: big,
                dump: vec!["e1 K [GY:A]", "e2 K [GY:A]"],
                counts: (1, 0, 0, 2, 1),
                log: vec![("e2", Op::Upsert)],
            },
            Case {
                name: "a broken element after its key was written is undone in full",
                before: vec![one(&[&e1])],
                doc: break_dates(one(&[&e1b, &e2, &broken("e1"), &e1_gr])),
                keys_per_batch: 1,
                caps: big,
                dump: vec!["e1 K [GY:A]", "e2 K [GY:A]"],
                // e1b withdrawn, the broken one and e1_gr held: three elements quarantined.
                counts: (1, 0, 0, 3, 2),
                log: vec![("e2", Op::Upsert)],
            },
            Case {
                name: "a new key held back after it was created is gone again",
                before: vec![],
                doc: break_dates(one(&[&e1, &e2, &broken("e1")])),
                keys_per_batch: 1,
                caps: (1 << 30, 0),
                dump: vec!["e2 K [GY:A]"],
                counts: (1, 0, 0, 2, 2),
                log: vec![("e2", Op::Upsert)],
            },
        ]
    }

    #[test]
    fn every_fate_gives_exactly_its_tables_counts_and_log() {
        for ahead in [true, false] {
            for c in cases() {
                let mut model = Model::default();
                let limits = BatchLimits {
                    keys: c.keys_per_batch,
                    elements: 4 * c.keys_per_batch,
                    bytes: 1 << 30,
                };
                for d in &c.before {
                    model.apply(d, limits, (1 << 30, 1 << 30), ahead);
                }
                let log_before = model.change_log.len();
                let s = model.apply(&c.doc, limits, c.caps, ahead);
                let name = format!("{} (building ahead: {ahead})", c.name);
                assert_eq!(model.dump(), c.dump, "{name}");
                assert_eq!(counts(&s), c.counts, "{name}");
                let log: Vec<(String, Op)> = model.change_log[log_before..].to_vec();
                let want: Vec<(String, Op)> =
                    c.log.iter().map(|(e, op)| (e.to_string(), *op)).collect();
                assert_eq!(log, want, "{name}");
            }
        }
    }

    #[test]
    fn two_documents_with_the_same_timestamp_apply_as_two() {
        // Nothing here depends on a document's time: tracking belongs to the document.
        let mut model = Model::default();
        let limits = BatchLimits {
            keys: 10,
            elements: 40,
            bytes: 1 << 30,
        };
        let caps = (1 << 30, 1 << 30);
        let e1 = element("e1", "GY", &["A"]);
        let e1b = element("e1", "GY", &["B"]);
        model.apply(&doc(std::slice::from_ref(&e1)), limits, caps, false);
        let s = model.apply(&doc(&[e1b]), limits, caps, false);
        assert_eq!(counts(&s), (1, 0, 0, 0, 1));
        let s = model.apply(&doc(&[e1]), limits, caps, false);
        assert_eq!(counts(&s), (1, 0, 0, 0, 1));
        assert_eq!(model.dump(), ["e1 K [GY:A]"]);
    }

    #[test]
    fn quarantine_keeps_one_row_per_distinct_element_with_how_often_it_came() {
        let mut model = Model::default();
        let limits = BatchLimits {
            keys: 10,
            elements: 40,
            bytes: 1 << 30,
        };
        let bad = break_dates(doc(&[broken("e9")]));
        for _ in 0..3 {
            model.apply(&bad, limits, (1 << 30, 1 << 30), false);
        }
        let rows: Vec<&(String, u64)> = model.quarantine.values().collect();
        assert_eq!(rows, [&("bad_date".to_owned(), 3)]);
    }

    #[test]
    fn chains_and_fingerprints_tell_sets_and_keys_apart() {
        let (a, b) = ([1u8; 32], [2u8; 32]);
        assert_eq!(chain(None, &a), a);
        assert_ne!(chain(Some(&a), &b), chain(Some(&b), &a));
        let k = |e: &str| ProvomradeKey {
            elev: e.into(),
            omrade: Omrade::Kurs { kurs: "K".into() },
        };
        assert_ne!(fingerprint(&k("a")), fingerprint(&k("b")));
        assert_eq!(fingerprint(&k("a")), fingerprint(&k("a")));
    }

    #[test]
    fn outcomes_and_their_operations() {
        let h = "h".to_owned();
        assert_eq!(outcome(None, &h), Outcome::Changed);
        assert_eq!(outcome(Some("x"), &h), Outcome::Changed);
        assert_eq!(outcome(Some("h"), &h), Outcome::Unchanged);
        assert_eq!(outcome(None, EMPTY_CONTENT_SHA256), Outcome::Cleared);
        assert_eq!(Outcome::Cleared.op(), Some(Op::Clear));
        assert_eq!(Op::parse("upsert"), Some(Op::Upsert));
        let _ = HashSet::<u8>::new();
    }
}
