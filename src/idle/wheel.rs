//! Idle timers: a hierarchical timing wheel that scales to millions of routes.
//!
//! # What it is and why
//!
//! Every route that goes quiet must be looked at again `idle_timeout` later. With 1,000,000 routes a
//! tokio `Sleep` (or a task) per route would cost hundreds of bytes each and put a timer
//! registration on the request path. Instead one background ticker owns a [`TimingWheel`]: it arms
//! an entry per route, calls [`TimingWheel::advance`] once per tick (or sleeps until
//! [`TimingWheel::next_deadline`]) and decides what to do with each [`Expired`] entry. The request
//! path never touches the wheel; the wheel does no locking and has a `&mut self` API.
//!
//! A flat wheel (one ring slot per tick) needs as many slots as the longest timeout, or has to step
//! over every empty slot when time jumps. A *hierarchical* wheel keeps a few levels of 64 slots,
//! each slot of a level as wide as the whole level below it, so a handful of levels cover any
//! practical span, an entry is moved at most once per level on its way down, and empty slots are
//! skipped with one `trailing_zeros` on a 64-bit occupancy bitmap per level. This is the design of
//! tokio's own timer (`tokio/src/runtime/time/wheel/`), without its intrusive lists and locking.
//!
//! # Level arithmetic
//!
//! Write a tick in base 64: digit `L` (bits `6L..6L+6`) of a deadline is its slot at level `L`.
//!
//! | level | slot width   | level range  | with 1 s ticks        |
//! |-------|--------------|--------------|-----------------------|
//! | 0     | 1            | 64           | 1 s / ~1 min          |
//! | 1     | 64           | 64²          | ~1 min / ~68 min      |
//! | 2     | 64²          | 64³          | ~68 min / ~3 days     |
//! | 3     | 64³          | 64⁴          | ~3 days / ~194 days   |
//! | 4     | 64⁴          | 64⁵          | ~194 days / ~34 years |
//! | 5     | 64⁵          | 64⁶ = 2³⁶    | ~34 years / ~2179 yrs |
//!
//! An entry lives at the level of the *most significant digit in which its deadline differs from
//! `now`*: `level = ilog2((now ^ deadline) | 63) / 6` (the `| 63` makes level 0 the minimum and
//! keeps `ilog2` away from zero). So every entry at level `L` shares all digits above `L` with
//! `now`, and its digit `L` is greater than `now`'s: all occupied slots of a level lie *ahead* of
//! `now` within the current rotation of that level, in slot order, and every slot of level `L`
//! comes due before any slot of level `L + 1`. The next slot to process is therefore the lowest
//! set bit of the lowest non-empty level, and it is due at its start,
//! `(now & !(level_range - 1)) + slot * slot_width`. Processing a slot at its start moves `now`
//! there; its entries then differ from `now` only below digit `L`, so they are re-inserted one or
//! more levels lower (a *cascade*), except those whose deadline is exactly `now`, which fire.
//! Level 0 slots are one tick wide: all their entries fire. Because slots are processed in time
//! order and entries only fire at their exact deadline tick, [`TimingWheel::advance`] reports them
//! in deadline order. Its cost is the number of levels plus the work per entry (at most one move
//! per level, then firing); ticks with nothing due cost nothing, however many are skipped.
//!
//! # Beyond the span
//!
//! The six levels span `2³⁶` ticks (the top level's range). A deadline in a later top-level
//! rotation than `now` (at most a few rare "never" timers in practice) goes to an overflow
//! min-heap instead of the wheel; when `now` reaches the start of the rotation holding the
//! earliest of them, the ones in that rotation are moved into the wheel. This keeps the wheel's
//! invariant above intact (tokio instead lets far timers wrap around the top level, which makes it
//! revisit them once per rotation and needs a cap on the distance). A deadline at or before `now`
//! is kept in a small pending list and fires on the next [`TimingWheel::advance`].
//!
//! # Lazy removal with generations
//!
//! There is no `remove`: finding an entry would need an index per key (memory) or a search
//! (time). Instead the owner keeps, per key, the generation of the timer it currently wants. To
//! re-arm a key it bumps that generation and inserts again; the old entry stays in the wheel and
//! still comes out of [`TimingWheel::advance`], where the owner drops it because its
//! `generation` is stale. An idle watcher rarely needs even that: when an entry fires for a route
//! that saw traffic, the owner simply inserts a new one at `last_seen + idle_timeout`.
//!
//! # Memory
//!
//! Each slot is a `Vec<Expired>` of 16-byte entries (`key: u32, generation: u32, deadline: u64`),
//! about 16–24 bytes per armed entry with `Vec` growth slack (20.9 B/route measured with
//! 1,000,000 routes, see BENCHMARKS.md). Slots are read and written sequentially, which suits the
//! cache. An arena with intrusive `u32` links used the same memory but was about 10× slower to
//! cascade and fire, one cache miss per entry. A drained slot keeps its buffer only if it is small
//! (`RETAIN_CAPACITY`), so a burst does not pin memory forever. Far entries cost O(log n) each in
//! the heap.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fmt;

/// A point in time, counted in ticks since the wheel's epoch (a tick is e.g. 1 s; the owner decides).
///
/// Plain integers keep entries small and make the wheel independent of any clock: the owner maps
/// its clock to ticks.
pub type Tick = u64;

/// An entry that came due.
///
/// This is also the entry as stored in the wheel (16 bytes), so firing a slot is a plain copy.
/// `key` is the owner's dense index (e.g. its backend number) and `generation` tells the owner
/// whether this entry is still the one it wants (see the module docs on lazy removal).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expired {
    /// The owner's index for the timer, e.g. the route or backend number.
    pub key: u32,
    /// The owner's generation of `key` when it armed this entry, to tell stale entries apart.
    pub generation: u32,
    /// The tick the entry was armed for; it fires on the first advance whose `now >= deadline`.
    pub deadline: Tick,
}

// The memory budget (1,000,000 routes in well under 64 MB) relies on 16-byte entries.
const _: () = assert!(std::mem::size_of::<Expired>() == 16);

/// Bits of a tick handled by one level: 64 slots per level, one `u64` occupancy bitmap.
const BITS_PER_LEVEL: u32 = 6;

/// Slots per level.
const SLOTS: usize = 1 << BITS_PER_LEVEL;

/// The low bits of a tick that select a slot at level 0.
const SLOT_MASK: u64 = SLOTS as u64 - 1;

/// Number of levels: `2³⁶` ticks of span, like tokio's wheel (over 2000 years with 1 s ticks).
const LEVELS: usize = 6;

/// A drained slot keeps its buffer for reuse only up to this many entries (4 KiB), which bounds the
/// memory held by an empty wheel to `LEVELS * SLOTS * 4 KiB` at worst while still avoiding an
/// allocation per refill for the common, small slots.
const RETAIN_CAPACITY: usize = 256;

/// The width, in ticks, of one slot at `level`.
fn slot_range(level: usize) -> u64 {
    1 << (BITS_PER_LEVEL * level as u32)
}

/// The range, in ticks, of one full rotation of `level` (64 slots).
fn level_range(level: usize) -> u64 {
    1 << (BITS_PER_LEVEL * (level as u32 + 1))
}

/// The level an entry due at `deadline` belongs to when the wheel is at `now`.
///
/// It is the base-64 digit of the highest bit in which the two differ; the caller guarantees
/// `deadline > now` and that both are in the same top-level rotation (else the entry overflows).
fn level_for(now: Tick, deadline: Tick) -> usize {
    (((now ^ deadline) | SLOT_MASK).ilog2() / BITS_PER_LEVEL) as usize
}

/// The slot of `deadline` at `level`: its base-64 digit number `level`.
fn slot_for(deadline: Tick, level: usize) -> usize {
    ((deadline >> (BITS_PER_LEVEL * level as u32)) & SLOT_MASK) as usize
}

/// One level: 64 slots of entries, a bitmap of the non-empty ones, and each slot's earliest deadline.
struct Level {
    /// Bit `s` is set iff `slots[s]` is non-empty; lets `advance` skip empty slots in O(1).
    occupied: u64,
    /// The entries, unordered within a slot.
    slots: [Vec<Expired>; SLOTS],
    /// The earliest deadline in each slot (`Tick::MAX` when empty). Exact, because nothing is ever
    /// removed early; it makes `next_deadline` exact without scanning a slot.
    earliest: [Tick; SLOTS],
}

impl Level {
    fn new() -> Self {
        Level {
            occupied: 0,
            slots: std::array::from_fn(|_| Vec::new()),
            earliest: [Tick::MAX; SLOTS],
        }
    }

    /// The non-empty slot that comes due first: all occupied slots are ahead of `now` in this
    /// level's current rotation (see the module docs), so it is simply the lowest set bit.
    fn first_slot(&self) -> Option<usize> {
        (self.occupied != 0).then(|| self.occupied.trailing_zeros() as usize)
    }

    fn push(&mut self, slot: usize, entry: Expired) {
        self.slots[slot].push(entry);
        self.occupied |= 1 << slot;
        self.earliest[slot] = self.earliest[slot].min(entry.deadline);
    }

    /// Empties `slot`, handing its entries to the caller (who gives the buffer back via `recycle`).
    fn take(&mut self, slot: usize) -> Vec<Expired> {
        self.occupied &= !(1 << slot);
        self.earliest[slot] = Tick::MAX;
        std::mem::take(&mut self.slots[slot])
    }

    /// Gives a drained buffer back to `slot` if it is small and the slot has not been refilled.
    fn recycle(&mut self, slot: usize, mut buffer: Vec<Expired>) {
        buffer.clear();
        if buffer.capacity() <= RETAIN_CAPACITY && self.slots[slot].capacity() == 0 {
            self.slots[slot] = buffer;
        }
    }
}

/// A deadline beyond the wheel's span, ordered by deadline for the overflow heap.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Far {
    deadline: Tick,
    key: u32,
    generation: u32,
}

/// What comes due next and when (see `TimingWheel::next_due`).
#[derive(Debug, Clone, Copy)]
struct Due {
    /// The tick at which this must be processed.
    at: Tick,
    /// A wheel slot, or `None` for the overflow heap's earliest rotation.
    slot: Option<(usize, usize)>,
}

/// A hierarchical timing wheel of idle timers, owned by one background ticker.
///
/// Single-owner and lock-free by construction (`&mut self` everywhere): arms coming from other
/// threads are queued by the owner and inserted from its task. See the module docs for the design.
pub struct TimingWheel {
    /// The current tick: everything due at or before it has been handed out by `advance`.
    now: Tick,
    /// `LEVELS` levels, boxed so the wheel itself is a small handle.
    levels: Box<[Level]>,
    /// `BITS_PER_LEVEL * levels.len()`: deadlines that differ from `now` at or above this bit are
    /// in a later top-level rotation and wait in `far`.
    span_bits: u32,
    /// Entries beyond the span, earliest first.
    far: BinaryHeap<Reverse<Far>>,
    /// Entries armed at or before `now`; they fire on the next `advance`.
    pending: Vec<Expired>,
    /// The earliest deadline in `pending` (`Tick::MAX` when empty).
    pending_min: Tick,
    /// Number of armed entries, stale generations included.
    len: usize,
}

impl Default for TimingWheel {
    /// Same as [`TimingWheel::new`]: an empty wheel at tick 0.
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for TimingWheel {
    /// Summarises the wheel (a full dump could hold millions of entries).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let occupied: Vec<String> = self
            .levels
            .iter()
            .map(|level| format!("{:#018x}", level.occupied))
            .collect();
        f.debug_struct("TimingWheel")
            .field("now", &self.now)
            .field("len", &self.len)
            .field("occupied", &occupied)
            .field("far", &self.far.len())
            .field("pending", &self.pending.len())
            .finish()
    }
}

impl TimingWheel {
    /// Creates an empty wheel whose clock starts at tick 0; the owner maps its own clock to ticks.
    pub fn new() -> Self {
        Self::with_levels(LEVELS)
    }

    /// Creates a wheel with `levels` levels (span `64^levels` ticks). Tests use small wheels to
    /// walk across the span tick by tick; the public constructor always uses `LEVELS`.
    fn with_levels(levels: usize) -> Self {
        // 10 levels is 60 bits: every range below still fits a `u64`.
        assert!((1..=10).contains(&levels), "1 to 10 levels");
        TimingWheel {
            now: 0,
            levels: (0..levels).map(|_| Level::new()).collect(),
            span_bits: BITS_PER_LEVEL * levels as u32,
            far: BinaryHeap::new(),
            pending: Vec::new(),
            pending_min: Tick::MAX,
            len: 0,
        }
    }

    /// The current tick, i.e. the `now` of the last [`advance`](Self::advance) (0 initially), so
    /// the owner can compute deadlines relative to the wheel's clock.
    pub fn now(&self) -> Tick {
        self.now
    }

    /// Arms `key` to fire at `deadline` (a past or present deadline fires on the next advance).
    ///
    /// The same key may be armed several times: the owner tells stale entries apart by
    /// `generation` (lazy removal: the wheel never searches for an old entry). O(1) amortised.
    pub fn insert(&mut self, key: u32, generation: u32, deadline: Tick) {
        let entry = Expired {
            key,
            generation,
            deadline,
        };
        self.len += 1;
        if deadline <= self.now {
            self.pending_min = self.pending_min.min(deadline);
            self.pending.push(entry);
        } else {
            self.schedule(entry);
        }
    }

    /// Moves time forward to `now`, appending every entry with deadline <= now to `fired`, in
    /// deadline order (entries with equal deadlines come out in no particular order).
    ///
    /// Cost is proportional to the entries fired or cascaded plus the number of levels, not to the
    /// ticks skipped: advancing by an hour with nothing due is as cheap as by one tick. Time never
    /// goes backwards: a `now` earlier than [`now()`](Self::now) is taken as `now()` (which still
    /// fires entries armed in the past).
    pub fn advance(&mut self, now: Tick, fired: &mut Vec<Expired>) {
        let now = now.max(self.now);
        let before = fired.len();

        // Pending entries are all due at or before `self.now`, so they precede anything in the wheel.
        if !self.pending.is_empty() {
            self.pending.sort_unstable_by_key(|entry| entry.deadline);
            fired.append(&mut self.pending);
            self.pending_min = Tick::MAX;
            if self.pending.capacity() > RETAIN_CAPACITY {
                self.pending = Vec::new();
            }
        }

        while let Some(due) = self.next_due() {
            if due.at > now {
                break;
            }
            // Process the slot at its start: this is what keeps the level arithmetic valid.
            self.now = due.at;
            match due.slot {
                Some((0, slot)) => {
                    // One-tick slot: every entry is due exactly now.
                    let mut entries = self.levels[0].take(slot);
                    debug_assert!(entries.iter().all(|entry| entry.deadline == self.now));
                    fired.append(&mut entries);
                    self.levels[0].recycle(slot, entries);
                }
                Some((level, slot)) => {
                    // Cascade: the entries now differ from `now` only below `level`.
                    let mut entries = self.levels[level].take(slot);
                    for entry in entries.drain(..) {
                        self.fire_or_schedule(entry, fired);
                    }
                    self.levels[level].recycle(slot, entries);
                }
                None => {
                    // `now` entered the top-level rotation of the earliest far entries.
                    while let Some(&Reverse(far)) = self.far.peek() {
                        if !self.in_span(far.deadline) {
                            break;
                        }
                        self.far.pop();
                        let entry = Expired {
                            key: far.key,
                            generation: far.generation,
                            deadline: far.deadline,
                        };
                        self.fire_or_schedule(entry, fired);
                    }
                }
            }
        }

        // Nothing is due in (self.now, now]: every remaining entry keeps its level and slot.
        self.now = now;
        self.len -= fired.len() - before;
    }

    /// Number of armed entries, stale generations included (they leave only by firing).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is armed, e.g. so the owner can sleep until it is told of a new arm.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The next tick at which something may fire, if any (lets the owner sleep longer).
    ///
    /// This is the exact earliest deadline of all armed entries (stale ones included). It may be
    /// at or before [`now()`](Self::now) when entries were armed in the past: then call
    /// [`advance`](Self::advance) right away. O(levels).
    pub fn next_deadline(&self) -> Option<Tick> {
        if !self.pending.is_empty() {
            return Some(self.pending_min);
        }
        // The lowest non-empty level's first slot holds the earliest entries (module docs).
        for level in self.levels.iter() {
            if let Some(slot) = level.first_slot() {
                return Some(level.earliest[slot]);
            }
        }
        self.far.peek().map(|Reverse(far)| far.deadline)
    }

    /// Whether `deadline` is in the same top-level rotation as `now`, i.e. fits in the levels.
    fn in_span(&self, deadline: Tick) -> bool {
        (self.now ^ deadline) >> self.span_bits == 0
    }

    /// Files an entry due after `now` at its level and slot, or in the overflow heap.
    fn schedule(&mut self, entry: Expired) {
        debug_assert!(entry.deadline > self.now);
        if self.in_span(entry.deadline) {
            let level = level_for(self.now, entry.deadline);
            self.levels[level].push(slot_for(entry.deadline, level), entry);
        } else {
            self.far.push(Reverse(Far {
                deadline: entry.deadline,
                key: entry.key,
                generation: entry.generation,
            }));
        }
    }

    /// During `advance`: an entry taken out of a slot (or the heap) at `now` fires if it is due
    /// exactly now, and otherwise goes down to the level it now belongs to.
    fn fire_or_schedule(&mut self, entry: Expired, fired: &mut Vec<Expired>) {
        debug_assert!(entry.deadline >= self.now);
        if entry.deadline == self.now {
            fired.push(entry);
        } else {
            self.schedule(entry);
        }
    }

    /// The slot (or far rotation) that must be processed next, and when: O(levels).
    fn next_due(&self) -> Option<Due> {
        for (level, entries) in self.levels.iter().enumerate() {
            if let Some(slot) = entries.first_slot() {
                let level_start = self.now & !(level_range(level) - 1);
                let at = level_start + slot as u64 * slot_range(level);
                debug_assert!(at > self.now);
                return Some(Due {
                    at,
                    slot: Some((level, slot)),
                });
            }
        }
        // The wheel is empty: the far entries' rotation starts once it holds nothing earlier.
        let span_mask = (1u64 << self.span_bits) - 1;
        self.far.peek().map(|Reverse(far)| Due {
            at: far.deadline & !span_mask,
            slot: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    /// A tiny deterministic PRNG (xorshift64), so tests need no `rand` crate.
    struct XorShift(u64);

    impl XorShift {
        fn new(seed: u64) -> Self {
            XorShift(seed.max(1))
        }
        fn next(&mut self) -> u64 {
            let mut x = self.0;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            self.0 = x;
            x
        }
        /// Uniform-ish in `0..n` (n > 0).
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    impl TimingWheel {
        /// Checks every structural invariant the level arithmetic relies on.
        fn check_invariants(&self) {
            let mut count = self.pending.len() + self.far.len();
            for (level, entries) in self.levels.iter().enumerate() {
                for slot in 0..SLOTS {
                    let list = &entries.slots[slot];
                    count += list.len();
                    assert_eq!(
                        entries.occupied & (1 << slot) != 0,
                        !list.is_empty(),
                        "occupancy bit of level {level} slot {slot}"
                    );
                    let earliest = list.iter().map(|e| e.deadline).min();
                    assert_eq!(entries.earliest[slot], earliest.unwrap_or(Tick::MAX));
                    for e in list {
                        assert!(e.deadline > self.now, "{e:?} at now {}", self.now);
                        assert!(self.in_span(e.deadline));
                        assert_eq!(level_for(self.now, e.deadline), level, "{e:?}");
                        assert_eq!(slot_for(e.deadline, level), slot, "{e:?}");
                    }
                }
            }
            for Reverse(far) in self.far.iter() {
                assert!(far.deadline > self.now && !self.in_span(far.deadline));
            }
            for e in &self.pending {
                assert!(e.deadline <= self.now);
                assert!(e.deadline >= self.pending_min);
            }
            assert_eq!(count, self.len);
        }
    }

    fn advance(wheel: &mut TimingWheel, now: Tick) -> Vec<Expired> {
        let mut fired = Vec::new();
        wheel.advance(now, &mut fired);
        fired
    }

    fn assert_deadline_order(fired: &[Expired]) {
        assert!(
            fired.windows(2).all(|w| w[0].deadline <= w[1].deadline),
            "not in deadline order: {fired:?}"
        );
    }

    /// Arms one entry per distance at `start`, runs the advances in `steps` (increasing `now`s)
    /// and checks that each entry fires exactly once, on the first step whose `now >= deadline`.
    fn check_fires_on_first_step_reaching_deadline(
        mut wheel: TimingWheel,
        start: Tick,
        distances: &[u64],
        steps: impl IntoIterator<Item = Tick>,
    ) {
        if start > 0 {
            assert!(advance(&mut wheel, start).is_empty());
        }
        let deadlines: Vec<Tick> = distances.iter().map(|&d| start.saturating_add(d)).collect();
        for (key, &deadline) in deadlines.iter().enumerate() {
            wheel.insert(key as u32, 7, deadline);
        }
        let mut fired_at: Vec<Option<Tick>> = vec![None; deadlines.len()];
        let mut previous = start;
        let mut first = true;
        for (step, now) in steps.into_iter().enumerate() {
            let fired = advance(&mut wheel, now);
            assert_deadline_order(&fired);
            for e in fired {
                let key = e.key as usize;
                assert_eq!(e.generation, 7);
                assert_eq!(e.deadline, deadlines[key]);
                assert!(fired_at[key].is_none(), "{e:?} fired twice");
                fired_at[key] = Some(now);
                assert!(e.deadline <= now, "{e:?} fired early, at {now}");
                // The first step with now >= deadline: earlier steps had now < deadline, except
                // that a deadline at or before `start` fires on the very first step.
                assert!(first || e.deadline > previous, "{e:?} fired late, at {now}");
            }
            // The full check walks every slot: do it on a sample of the steps.
            if step % 4096 == 0 {
                wheel.check_invariants();
            }
            previous = now;
            first = false;
        }
        for (key, at) in fired_at.iter().enumerate() {
            assert!(at.is_some(), "deadline {} never fired", deadlines[key]);
        }
        assert!(wheel.is_empty());
        assert_eq!(wheel.next_deadline(), None);
    }

    const SPAN: u64 = 1 << 36;

    /// Distances around every level boundary of the default wheel.
    const NEAR: &[u64] = &[
        0, 1, 2, 62, 63, 64, 65, 127, 128, 4095, 4096, 4097, 262_143, 262_144, 262_145,
    ];

    /// Distances around the upper levels and far beyond the span.
    const FAR: &[u64] = &[
        (1 << 24) - 1,
        1 << 24,
        (1 << 30) + 5,
        SPAN - 1,
        SPAN,
        SPAN + 1,
        3 * SPAN + 12_345,
        1 << 40,
        (1 << 52) + 99,
    ];

    #[test]
    fn level_and_slot_arithmetic() {
        for deadline in 1..64 {
            assert_eq!(level_for(0, deadline), 0);
            assert_eq!(slot_for(deadline, 0), deadline as usize);
        }
        for level in 1..LEVELS {
            let start = slot_range(level);
            assert_eq!(level_for(0, start), level);
            assert_eq!(level_for(0, start - 1), level - 1);
            assert_eq!(level_for(0, level_range(level) - 1), level);
            assert_eq!(slot_for(5 * start + start - 1, level), 5);
        }
        // Only the highest differing digit counts, not the distance.
        assert_eq!(level_for(63, 64), 1);
        assert_eq!(level_for(64, 127), 0);
        assert_eq!(level_for(4095, 4096), 2);
    }

    #[test]
    fn fires_exactly_at_deadline_stepping_one_tick_at_a_time() {
        for start in [0, 1, 63, 64, 4000, 262_100, SPAN - 100] {
            let end = start + 262_146;
            check_fires_on_first_step_reaching_deadline(
                TimingWheel::new(),
                start,
                NEAR,
                start + 1..=end,
            );
        }
    }

    #[test]
    fn fires_exactly_once_with_big_jumps() {
        let all: Vec<u64> = NEAR.iter().chain(FAR).copied().collect();
        for start in [0, 5, 4095, SPAN - 3, 7 * SPAN + 1] {
            // Jump straight to each deadline, then one tick before and at the next one.
            let mut steps = Vec::new();
            for &d in &all {
                let deadline = start + d;
                steps.extend([deadline.saturating_sub(1).max(start + 1), deadline]);
            }
            steps.sort_unstable();
            check_fires_on_first_step_reaching_deadline(TimingWheel::new(), start, &all, steps);

            // Fixed strides of several sizes, then one jump to the end of time.
            for stride in [7, 1000, 4096, 100_003, 1 << 33] {
                let steps = (1..=2_000).map(|i| start + i * stride).chain([Tick::MAX]);
                check_fires_on_first_step_reaching_deadline(TimingWheel::new(), start, &all, steps);
            }

            // A single jump over everything.
            check_fires_on_first_step_reaching_deadline(
                TimingWheel::new(),
                start,
                &all,
                [Tick::MAX],
            );
        }
    }

    #[test]
    fn deadlines_beyond_the_span_of_a_small_wheel_step_by_step() {
        // Two levels span 4096 ticks, so crossing the span tick by tick is cheap to test.
        let distances = [
            0, 1, 63, 64, 4095, 4096, 4097, 8191, 8192, 8193, 12_288, 40_000, 65_536,
        ];
        for start in [0, 1, 4095, 4096, 5000] {
            check_fires_on_first_step_reaching_deadline(
                TimingWheel::with_levels(2),
                start,
                &distances,
                start + 1..=start + 70_000,
            );
        }
        check_fires_on_first_step_reaching_deadline(
            TimingWheel::with_levels(1),
            3,
            &distances,
            4..=70_000,
        );
    }

    #[test]
    fn deadline_at_the_end_of_time() {
        let mut wheel = TimingWheel::new();
        wheel.insert(1, 0, Tick::MAX);
        wheel.insert(2, 0, Tick::MAX - 1);
        assert_eq!(wheel.next_deadline(), Some(Tick::MAX - 1));
        assert!(advance(&mut wheel, Tick::MAX - 2).is_empty());
        assert_eq!(
            advance(&mut wheel, Tick::MAX - 1),
            [Expired {
                key: 2,
                generation: 0,
                deadline: Tick::MAX - 1
            }]
        );
        assert_eq!(advance(&mut wheel, Tick::MAX)[0].key, 1);
        assert!(wheel.is_empty());
    }

    #[test]
    fn fires_in_deadline_order() {
        let mut rng = XorShift::new(42);
        let mut wheel = TimingWheel::new();
        let mut deadlines = Vec::new();
        for key in 0..5_000 {
            let deadline = match key % 3 {
                0 => rng.below(64),
                1 => rng.below(1 << 20),
                _ => rng.below(1 << 40),
            } + 1;
            deadlines.push(deadline);
            wheel.insert(key, 0, deadline);
        }
        let fired = advance(&mut wheel, Tick::MAX);
        assert_deadline_order(&fired);
        let mut got: Vec<Tick> = fired.iter().map(|e| e.deadline).collect();
        got.sort_unstable();
        deadlines.sort_unstable();
        assert_eq!(got, deadlines);
    }

    #[test]
    fn insert_with_past_or_present_deadline_fires_on_next_advance() {
        let mut wheel = TimingWheel::new();
        assert!(advance(&mut wheel, 1000).is_empty());
        wheel.insert(1, 0, 1000); // present
        wheel.insert(2, 0, 10); // past
        wheel.insert(3, 0, 999);
        wheel.insert(4, 0, 1001);
        assert_eq!(wheel.len(), 4);
        assert_eq!(wheel.next_deadline(), Some(10));
        // Advancing to the same tick hands out what is already due, oldest first.
        let fired = advance(&mut wheel, 1000);
        let keys: Vec<u32> = fired.iter().map(|e| e.key).collect();
        assert_eq!(keys, [2, 3, 1]);
        assert_eq!(wheel.next_deadline(), Some(1001));
        // Time never goes backwards.
        assert!(advance(&mut wheel, 5).is_empty());
        assert_eq!(wheel.now(), 1000);
        // Past entries still come before the ones due in the advanced range.
        wheel.insert(5, 0, 0);
        let keys: Vec<u32> = advance(&mut wheel, 2000).iter().map(|e| e.key).collect();
        assert_eq!(keys, [5, 4]);
        assert!(wheel.is_empty());
    }

    #[test]
    fn rearming_a_key_yields_both_generations() {
        let mut wheel = TimingWheel::new();
        wheel.insert(9, 1, 100);
        wheel.insert(9, 2, 300); // re-armed later
        wheel.insert(8, 1, 300);
        wheel.insert(8, 2, 50); // re-armed earlier
        assert_eq!(wheel.len(), 4);
        let e = |key, generation, deadline| Expired {
            key,
            generation,
            deadline,
        };
        assert_eq!(advance(&mut wheel, 60), [e(8, 2, 50)]);
        assert_eq!(advance(&mut wheel, 200), [e(9, 1, 100)]);
        let mut last = advance(&mut wheel, 300);
        last.sort_unstable_by_key(|e| e.key);
        assert_eq!(last, [e(8, 1, 300), e(9, 2, 300)]);
        assert!(wheel.is_empty());
    }

    #[test]
    fn many_keys_in_one_slot() {
        for deadline in [1, 63, 64, 5000, 262_144 + 3, SPAN + 7] {
            let mut wheel = TimingWheel::new();
            for key in 0..10_000 {
                wheel.insert(key, key, deadline);
            }
            wheel.insert(10_000, 0, deadline + 1);
            assert!(advance(&mut wheel, deadline - 1).is_empty());
            let fired = advance(&mut wheel, deadline);
            assert_eq!(fired.len(), 10_000);
            let mut keys: Vec<u32> = fired.iter().map(|e| e.key).collect();
            keys.sort_unstable();
            assert!(keys.iter().copied().eq(0..10_000));
            assert!(fired
                .iter()
                .all(|e| e.deadline == deadline && e.generation == e.key));
            assert_eq!(wheel.len(), 1);
            assert_eq!(advance(&mut wheel, deadline + 1).len(), 1);
        }
    }

    #[test]
    fn a_million_random_deadlines_fire_once_at_the_right_tick() {
        const N: usize = 1_000_000;
        let mut rng = XorShift::new(0x5eed);
        let mut wheel = TimingWheel::new();
        let deadlines: Vec<Tick> = (0..N).map(|_| rng.below(1 << 20)).collect();
        for (key, &deadline) in deadlines.iter().enumerate() {
            wheel.insert(key as u32, 0, deadline);
        }
        assert_eq!(wheel.len(), N);
        assert_eq!(wheel.next_deadline(), deadlines.iter().copied().min());

        let mut seen = vec![false; N];
        let mut fired = Vec::new();
        let mut previous = 0;
        let mut total = 0;
        while !wheel.is_empty() {
            let now = previous + 1 + rng.below(3000);
            fired.clear();
            wheel.advance(now, &mut fired);
            assert_deadline_order(&fired);
            for e in &fired {
                let key = e.key as usize;
                assert_eq!(e.deadline, deadlines[key]);
                assert!(!seen[key], "{e:?} fired twice");
                seen[key] = true;
                // Deadline 0 was already due when armed: it fires on the first advance.
                assert!(e.deadline <= now && (e.deadline > previous || e.deadline == 0));
            }
            total += fired.len();
            previous = now;
        }
        assert_eq!(total, N);
    }

    #[test]
    fn next_deadline_is_the_earliest_armed_deadline() {
        let mut wheel = TimingWheel::new();
        assert_eq!(wheel.next_deadline(), None);
        wheel.insert(1, 0, SPAN * 5);
        assert_eq!(wheel.next_deadline(), Some(SPAN * 5)); // only a far entry
        wheel.insert(2, 0, 5000);
        wheel.insert(3, 0, 4100);
        assert_eq!(wheel.next_deadline(), Some(4100)); // inside a level-1 slot, exact
        wheel.insert(4, 0, 70);
        assert_eq!(wheel.next_deadline(), Some(70));
        assert!(advance(&mut wheel, 69).is_empty());
        assert_eq!(wheel.next_deadline(), Some(70));
        assert_eq!(advance(&mut wheel, 70).len(), 1);
        assert_eq!(wheel.next_deadline(), Some(4100));
        // Sleeping until `next_deadline` and advancing there fires exactly that entry.
        let next = wheel.next_deadline().unwrap_or(Tick::MAX);
        assert_eq!(advance(&mut wheel, next)[0].key, 3);
        wheel.insert(5, 0, 3); // armed in the past: due right away
        assert_eq!(wheel.next_deadline(), Some(3));
        let now = wheel.now();
        assert_eq!(advance(&mut wheel, now)[0].key, 5);
        assert_eq!(wheel.next_deadline(), Some(5000));
        assert_eq!(advance(&mut wheel, SPAN * 5 - 1).len(), 1);
        assert_eq!(wheel.next_deadline(), Some(SPAN * 5));
        assert_eq!(advance(&mut wheel, SPAN * 5).len(), 1);
        assert_eq!(wheel.next_deadline(), None);
    }

    /// A random distance, biased towards level boundaries and the span.
    fn random_distance(rng: &mut XorShift, span: u64) -> u64 {
        let jitter = rng.below(5);
        match rng.below(10) {
            0 => 0,
            1 => 1 + rng.below(64),
            2 => 1 + rng.below(4096),
            3 => rng.below(1 << 20),
            4 => (64u64.pow(1 + rng.below(5) as u32) + jitter).saturating_sub(2),
            5 => (span + jitter).saturating_sub(2),
            6 => rng.below(span * 3),
            7 => rng.below(1 << 44),
            8 => rng.next() >> rng.below(64),
            _ => rng.below(300),
        }
    }

    /// Random inserts and advances against a `BTreeMap` model of what must fire when.
    fn compare_with_model(levels: usize, seed: u64, ops: usize) {
        let span = 1u64 << (BITS_PER_LEVEL * levels as u32);
        let mut rng = XorShift::new(seed);
        let mut wheel = TimingWheel::with_levels(levels);
        // deadline -> entries, each entry once
        let mut model: BTreeMap<Tick, Vec<Expired>> = BTreeMap::new();
        let mut model_len = 0;
        let mut now: Tick = 0;
        for op in 0..ops {
            if rng.below(3) != 0 {
                let key = rng.below(50) as u32;
                let generation = op as u32;
                let deadline = if rng.below(8) == 0 {
                    now.saturating_sub(rng.below(100)) // past or present
                } else {
                    now.saturating_add(random_distance(&mut rng, span))
                };
                wheel.insert(key, generation, deadline);
                model.entry(deadline).or_default().push(Expired {
                    key,
                    generation,
                    deadline,
                });
                model_len += 1;
            } else {
                let target = match rng.below(6) {
                    0 => now,
                    1 => now.saturating_add(1),
                    2 => model.keys().next().copied().unwrap_or(now),
                    3 => model
                        .keys()
                        .next()
                        .copied()
                        .unwrap_or(now)
                        .saturating_sub(1),
                    4 => now.saturating_add(random_distance(&mut rng, span)),
                    _ => now.saturating_add(rng.below(200)),
                };
                let fired = advance(&mut wheel, target);
                now = now.max(target);
                assert_deadline_order(&fired);
                let later = model.split_off(&now.saturating_add(1));
                let mut expected: Vec<Expired> = std::mem::replace(&mut model, later)
                    .into_values()
                    .flatten()
                    .collect();
                if now == Tick::MAX {
                    expected.extend(model.values().flatten());
                    model.clear();
                }
                model_len -= expected.len();
                let key = |e: &Expired| (e.deadline, e.key, e.generation);
                let mut got = fired;
                got.sort_unstable_by_key(key);
                expected.sort_unstable_by_key(key);
                assert_eq!(
                    got, expected,
                    "levels {levels} seed {seed} op {op} now {now}"
                );
            }
            assert_eq!(wheel.now(), now);
            assert_eq!(wheel.len(), model_len);
            assert_eq!(wheel.next_deadline(), model.keys().next().copied());
            wheel.check_invariants();
        }
        // Drain everything.
        let fired = advance(&mut wheel, Tick::MAX);
        assert_deadline_order(&fired);
        assert_eq!(fired.len(), model_len);
        assert!(wheel.is_empty());
    }

    #[test]
    fn matches_a_btreemap_model_on_random_operations() {
        for seed in 1..=40 {
            for levels in [1, 2, 3, LEVELS] {
                compare_with_model(levels, seed * 7919 + levels as u64, 600);
            }
        }
    }
}
