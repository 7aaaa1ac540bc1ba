//! A scenario as data: which topics exist, who publishes where, who subscribes to what.
//!
//! A *stream* is one publisher's messages as one subscriber receives them; each has its own
//! sequence accounting. Topics end in their index (`…/t/7`), so a subscriber finds the stream
//! of a message from its topic alone, whatever the filter.

use super::options::Scenario;

/// One subscriber: its filter and the contiguous range of topics (and streams) it receives.
#[derive(Clone, Debug)]
pub struct SubscriberPlan {
    /// The filter it subscribes to.
    pub filter: String,
    /// First topic index it receives.
    pub first_topic: usize,
    /// How many consecutive topics it receives.
    pub topics: usize,
    /// Stream id of `first_topic`; the others follow.
    pub first_stream: usize,
}

/// The whole scenario.
#[derive(Clone, Debug)]
pub struct Plan {
    /// Topic names, by index.
    pub topics: Vec<String>,
    /// Topic index of each publisher (publisher `i` publishes on `topics[publishers[i]]`).
    pub publishers: Vec<usize>,
    /// Subscribers.
    pub subscribers: Vec<SubscriberPlan>,
    /// Stream ids each publisher feeds (one per subscriber of its topic).
    pub streams_of_publisher: Vec<Vec<usize>>,
    /// Publisher of each stream.
    pub publisher_of_stream: Vec<usize>,
}

impl Plan {
    /// Builds the plan for `scenario` with `n` clients on the "many" side; `prefix` keeps
    /// concurrent runs apart.
    pub fn new(scenario: Scenario, n: usize, prefix: &str) -> Plan {
        let topic = |i: usize| format!("{prefix}/t/{i}");
        let mut plan = Plan {
            topics: Vec::new(),
            publishers: Vec::new(),
            subscribers: Vec::new(),
            streams_of_publisher: Vec::new(),
            publisher_of_stream: Vec::new(),
        };
        let topics = if scenario == Scenario::Fanout { 1 } else { n };
        plan.topics = (0..topics).map(topic).collect();
        plan.publishers = (0..topics).collect();
        plan.streams_of_publisher = vec![Vec::new(); topics];
        match scenario {
            Scenario::Fanout => (0..n).for_each(|_| plan.add_subscriber(topic(0), 0, 1)),
            Scenario::Fanin => plan.add_subscriber(format!("{prefix}/t/+"), 0, n),
            Scenario::Pairs => (0..n).for_each(|i| plan.add_subscriber(topic(i), i, 1)),
        }
        plan
    }

    /// Total number of streams.
    pub fn streams(&self) -> usize {
        self.publisher_of_stream.len()
    }

    fn add_subscriber(&mut self, filter: String, first_topic: usize, topics: usize) {
        let first_stream = self.publisher_of_stream.len();
        for t in first_topic..first_topic + topics {
            // Publisher index equals topic index in every scenario.
            self.streams_of_publisher[t].push(self.publisher_of_stream.len());
            self.publisher_of_stream.push(t);
        }
        self.subscribers.push(SubscriberPlan {
            filter,
            first_topic,
            topics,
            first_stream,
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

    #[test]
    fn shapes() {
        let f = Plan::new(Scenario::Fanout, 3, "x");
        assert_eq!(
            (f.topics.len(), f.subscribers.len(), f.streams()),
            (1, 3, 3)
        );
        assert_eq!(f.streams_of_publisher[0], vec![0, 1, 2]);
        let i = Plan::new(Scenario::Fanin, 3, "x");
        assert_eq!(
            (i.publishers.len(), i.subscribers.len(), i.streams()),
            (3, 1, 3)
        );
        assert_eq!(i.subscribers[0].filter, "x/t/+");
        let p = Plan::new(Scenario::Pairs, 3, "x");
        assert_eq!(p.streams_of_publisher[2], vec![2]);
        assert_eq!(topic_index(b"x/t/12"), Some(12));
    }
}
