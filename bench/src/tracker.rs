//! Loss, duplicate and reorder accounting for one stream of sequence numbers (one publisher's
//! messages as one subscriber sees them).

/// How far back (in sequence numbers) a late message can still be told from a duplicate.
const HISTORY_LEN: u64 = 1 << 16;

/// Counts for one stream.
#[derive(Clone, Debug)]
pub struct Tracker {
    /// One past the highest sequence number seen.
    next: u64,
    /// Messages missing so far (gaps), corrected when a late one fills a gap.
    pub lost: u64,
    /// Messages seen twice.
    pub duplicated: u64,
    /// Messages that arrived after a higher sequence number.
    pub reordered: u64,
    /// Distinct messages seen.
    pub received: u64,
    /// Bit per sequence number in the last `HISTORY_LEN`, as a ring.
    seen: Vec<u64>,
}

impl Default for Tracker {
    fn default() -> Self {
        Tracker {
            next: 0,
            lost: 0,
            duplicated: 0,
            reordered: 0,
            received: 0,
            seen: vec![0; (HISTORY_LEN / 64) as usize],
        }
    }
}

impl Tracker {
    /// One past the highest sequence number seen.
    pub fn next(&self) -> u64 {
        self.next
    }

    /// Accounts one arrival of `seq`.
    pub fn record(&mut self, seq: u64) {
        if seq >= self.next {
            let gap = seq - self.next;
            self.lost += gap;
            // The ring slots of the skipped numbers still hold bits from HISTORY_LEN ago.
            for missing in self.next..seq.min(self.next + HISTORY_LEN) {
                self.set(missing, false);
            }
            self.set(seq, true);
            self.next = seq + 1;
            self.received += 1;
        } else if self.next - seq > HISTORY_LEN {
            // Too old to tell; count it as late rather than guess a duplicate.
            self.reordered += 1;
            self.lost = self.lost.saturating_sub(1);
            self.received += 1;
        } else if self.is_seen(seq) {
            self.duplicated += 1;
        } else {
            self.set(seq, true);
            self.reordered += 1;
            self.lost = self.lost.saturating_sub(1);
            self.received += 1;
        }
    }

    /// Counts the tail never received once the publisher is known to have sent `published`.
    pub fn finish(&mut self, published: u64) {
        self.lost += published.saturating_sub(self.next);
    }

    fn is_seen(&self, seq: u64) -> bool {
        let bit = seq % HISTORY_LEN;
        self.seen[(bit / 64) as usize] & (1 << (bit % 64)) != 0
    }

    fn set(&mut self, seq: u64, on: bool) {
        let bit = seq % HISTORY_LEN;
        let word = &mut self.seen[(bit / 64) as usize];
        if on {
            *word |= 1 << (bit % 64);
        } else {
            *word &= !(1 << (bit % 64));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_order_then_tail_loss() {
        let mut t = Tracker::default();
        (0..10).for_each(|s| t.record(s));
        t.finish(12);
        assert_eq!(
            (t.lost, t.duplicated, t.reordered, t.received),
            (2, 0, 0, 10)
        );
    }

    #[test]
    fn gap_filled_late_and_duplicate() {
        let mut t = Tracker::default();
        for s in [0, 1, 3, 2, 3, 5] {
            t.record(s);
        }
        t.finish(6);
        assert_eq!(
            (t.lost, t.duplicated, t.reordered, t.received),
            (1, 1, 1, 5)
        );
    }

    #[test]
    fn ring_wraps_without_false_duplicates() {
        let mut t = Tracker::default();
        t.record(0);
        t.record(HISTORY_LEN + 5);
        t.record(HISTORY_LEN + 1);
        assert_eq!(t.duplicated, 0);
        assert_eq!(t.reordered, 1);
    }
}
