//! A scenario as data: which topics exist, who publishes where, who subscribes to what.
//!
//! A *stream* is one publisher's messages as one subscriber receives them; each has its own
//! sequence accounting. Topics end in their index (`…/t/7`), and every publisher owns a
//! contiguous range of `topics_per_publisher` topics, so a subscriber finds the stream of a
//! message from its topic alone, whatever the filter.

use crate::options::Scenario;
use std::ops::Range;

/// One subscriber: its filter and the contiguous range of publishers (and streams) it receives.
#[derive(Clone, Debug)]
pub struct SubscriberPlan {
    /// The filter it subscribes to.
    pub filter: String,
    /// First publisher it receives.
    pub first_publisher: usize,
    /// How many consecutive publishers it receives (all of each one's topics).
    pub publishers: usize,
    /// Stream id of `first_publisher`; the others follow.
    pub first_stream: usize,
    /// Topics each publisher owns: topic `t` belongs to publisher `t / topics_per_publisher`.
    pub topics_per_publisher: usize,
}

impl SubscriberPlan {
    /// The slot (0-based among its streams) of a message on topic index `topic`, if it is one
    /// of this subscriber's.
    pub fn slot_of_topic(&self, topic: usize) -> Option<usize> {
        (topic / self.topics_per_publisher)
            .checked_sub(self.first_publisher)
            .filter(|&s| s < self.publishers)
    }
}

/// The whole scenario.
#[derive(Clone, Debug)]
pub struct Plan {
    /// Topic names, by index.
    pub topics: Vec<String>,
    /// Topics of each publisher; it cycles through them in order.
    pub publisher_topics: Vec<Range<usize>>,
    /// Subscribers.
    pub subscribers: Vec<SubscriberPlan>,
    /// Stream ids each publisher feeds (one per subscriber of its topics).
    pub streams_of_publisher: Vec<Vec<usize>>,
    /// Publisher of each stream.
    pub publisher_of_stream: Vec<usize>,
}

/// The shape of a run beyond the scenario: how many clients and topics.
#[derive(Clone, Copy, Debug)]
pub struct Shape {
    /// N: subscribers (fanout, wildcard), publishers (fanin) or pairs.
    pub n: usize,
    /// Wildcard: topics in the tree.
    pub topics: usize,
    /// Wildcard: publishers, each owning `topics / publishers` topics.
    pub publishers: usize,
}

impl Plan {
    /// Builds the plan for `scenario`; `prefix` keeps concurrent runs apart. `Conns` has no
    /// publishers and no subscribers.
    pub fn new(scenario: Scenario, shape: Shape, prefix: &str) -> Plan {
        let n = shape.n;
        let topic = |i: usize| format!("{prefix}/t/{i}");
        let mut plan = Plan {
            topics: Vec::new(),
            publisher_topics: Vec::new(),
            subscribers: Vec::new(),
            streams_of_publisher: Vec::new(),
            publisher_of_stream: Vec::new(),
        };
        match scenario {
            Scenario::Fanout => {
                plan.one_topic_per_publisher(vec![topic(0)]);
                (0..n).for_each(|_| plan.add_subscriber(topic(0), 0, 1, 1));
            }
            Scenario::Fanin => {
                plan.one_topic_per_publisher((0..n).map(topic).collect());
                plan.add_subscriber(format!("{prefix}/t/+"), 0, n, 1);
            }
            Scenario::Pairs => {
                plan.one_topic_per_publisher((0..n).map(topic).collect());
                (0..n).for_each(|i| plan.add_subscriber(topic(i), i, 1, 1));
            }
            Scenario::Wildcard => plan.wildcard(shape, prefix),
            Scenario::Conns | Scenario::Retained | Scenario::Handshakes => {}
        }
        plan
    }

    /// A tree `prefix/w/<publisher>/<t mod 10>/<t>`: publisher `p` owns `topics / publishers`
    /// consecutive topics; subscriber `j` follows publisher `j mod publishers` with `…/p/#`
    /// (even `j`) or `…/p/+/+` (odd `j`), so the trie holds both kinds of wildcard.
    fn wildcard(&mut self, shape: Shape, prefix: &str) {
        let publishers = shape.publishers.max(1);
        let per = shape.topics.div_ceil(publishers).max(1);
        self.topics = (0..publishers * per)
            .map(|t| format!("{prefix}/w/{}/{}/{t}", t / per, t % 10))
            .collect();
        self.publisher_topics = (0..publishers).map(|p| p * per..(p + 1) * per).collect();
        self.streams_of_publisher = vec![Vec::new(); publishers];
        for j in 0..shape.n {
            let p = j % publishers;
            let filter = if j % 2 == 0 {
                format!("{prefix}/w/{p}/#")
            } else {
                format!("{prefix}/w/{p}/+/+")
            };
            self.add_subscriber(filter, p, 1, per);
        }
    }

    fn one_topic_per_publisher(&mut self, topics: Vec<String>) {
        let n = topics.len();
        self.topics = topics;
        self.publisher_topics = (0..n).map(|i| i..i + 1).collect();
        self.streams_of_publisher = vec![Vec::new(); n];
    }

    /// Number of publishers.
    pub fn publishers(&self) -> usize {
        self.publisher_topics.len()
    }

    /// Total number of streams.
    pub fn streams(&self) -> usize {
        self.publisher_of_stream.len()
    }

    fn add_subscriber(
        &mut self,
        filter: String,
        first_publisher: usize,
        publishers: usize,
        topics_per_publisher: usize,
    ) {
        let first_stream = self.publisher_of_stream.len();
        for p in first_publisher..first_publisher + publishers {
            self.streams_of_publisher[p].push(self.publisher_of_stream.len());
            self.publisher_of_stream.push(p);
        }
        self.subscribers.push(SubscriberPlan {
            filter,
            first_publisher,
            publishers,
            first_stream,
            topics_per_publisher,
        });
    }
}

/// The topic index at the end of a topic name (`…/t/7` → 7).
pub fn topic_index(topic: &[u8]) -> Option<usize> {
    let start = topic.iter().rposition(|&b| b == b'/')? + 1;
    std::str::from_utf8(&topic[start..]).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(n: usize) -> Shape {
        Shape {
            n,
            topics: 100,
            publishers: 4,
        }
    }

    #[test]
    fn shapes() {
        let f = Plan::new(Scenario::Fanout, shape(3), "x");
        assert_eq!(
            (f.topics.len(), f.subscribers.len(), f.streams()),
            (1, 3, 3)
        );
        assert_eq!(f.streams_of_publisher[0], vec![0, 1, 2]);
        let i = Plan::new(Scenario::Fanin, shape(3), "x");
        assert_eq!(
            (i.publishers(), i.subscribers.len(), i.streams()),
            (3, 1, 3)
        );
        assert_eq!(i.subscribers[0].filter, "x/t/+");
        assert_eq!(i.subscribers[0].slot_of_topic(2), Some(2));
        let p = Plan::new(Scenario::Pairs, shape(3), "x");
        assert_eq!(p.streams_of_publisher[2], vec![2]);
        assert_eq!(p.subscribers[2].slot_of_topic(1), None);
        assert_eq!(topic_index(b"x/t/12"), Some(12));
    }

    #[test]
    fn wildcard_tree() {
        let w = Plan::new(Scenario::Wildcard, shape(8), "x");
        assert_eq!((w.topics.len(), w.publishers(), w.streams()), (100, 4, 8));
        assert_eq!(w.topics[27], "x/w/1/7/27");
        assert_eq!(w.publisher_topics[1], 25..50);
        assert_eq!(w.subscribers[1].filter, "x/w/1/+/+");
        assert_eq!(w.subscribers[4].filter, "x/w/0/#");
        // Subscriber 1 follows publisher 1: topics 25..50 are its, 24 is not.
        assert_eq!(w.subscribers[1].slot_of_topic(27), Some(0));
        assert_eq!(w.subscribers[1].slot_of_topic(24), None);
        assert_eq!(w.streams_of_publisher[1], vec![1, 5]);
    }
}
