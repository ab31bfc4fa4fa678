//! The MQTT sink's own bounded buffer: every message stays here until the
//! broker acknowledges it, and all unacknowledged ones are handed to each new
//! connection again, in order.
//!
//! rumqttc alone would lose them: with a clean session it clears the
//! requests it had queued or in flight when the connection dropped
//! (`EventLoop::clean` moves them to `pending`, and the next CONNACK without
//! `session_present` clears that). So every connection gets a fresh client,
//! and this buffer is the only place messages wait.
//!
//! Counting is exact while running: a message is counted as dropped only
//! when it leaves without having reached the network, so the broker cannot
//! have it. Room is made by dropping the oldest *waiting* message (neither
//! handed to the current connection nor ever written to one); messages the
//! client holds or wrote (the broker may have them) stay until acknowledged,
//! on top of `capacity`. Those are bounded by the client's request channel
//! and its in-flight window. A retained message replaces the older retained
//! one of its topic (only the newest is worth sending); that is not a drop.
//! At shutdown everything left is counted, written or not: a broker that did
//! not acknowledge in time may still have some of it.

use super::super::message::Message;
use rumqttc::QoS;
use std::collections::{HashMap, VecDeque};

/// A buffered message and its sequence number (increasing, never reused).
#[derive(Debug)]
struct Queued {
    seq: u64,
    message: Message,
    /// Written to some connection: the broker may have it, so it is never
    /// dropped to make room, only sent again.
    written: bool,
}

/// Messages waiting for the broker, and which of them the current
/// connection has been given.
///
/// The queue is in sequence order, and the messages handed to the current
/// connection or ever written come first: both are handed out oldest first.
#[derive(Debug)]
pub(super) struct Outbox {
    capacity: usize,
    qos: QoS,
    queue: VecDeque<Queued>,
    next_seq: u64,
    /// Sequence number of the first queued message not yet handed to the
    /// current connection.
    next_to_hand: u64,
    /// Publishes handed to the client that it has not yet written, in order;
    /// `None` for the messages of [`Outbox::on_connected`], which are not
    /// buffered.
    unwritten: VecDeque<Option<u64>>,
    /// Packet id -> sequence number of the written, unacknowledged ones.
    unacknowledged: HashMap<u16, u64>,
    connected: bool,
    dropped: u64,
    /// Drops since the connection last came up or went down.
    dropped_since_change: u64,
}

impl Outbox {
    pub(super) fn new(capacity: usize, qos: QoS) -> Self {
        Outbox {
            capacity: capacity.max(1),
            qos,
            queue: VecDeque::new(),
            next_seq: 0,
            next_to_hand: 0,
            unwritten: VecDeque::new(),
            unacknowledged: HashMap::new(),
            connected: false,
            dropped: 0,
            dropped_since_change: 0,
        }
    }

    /// Buffers `message` (replacing the queued retained message of its topic
    /// if it is retained), hands it on if connected, and drops the oldest
    /// waiting message if more than `capacity` wait. True if this was the
    /// first drop since the connection came up or went down (worth one
    /// warning).
    pub(super) fn push(&mut self, message: Message, send: impl FnMut(&Message) -> bool) -> bool {
        if message.retain {
            self.queue
                .retain(|q| !(q.message.retain && q.message.topic == message.topic));
        }
        self.queue.push_back(Queued {
            seq: self.next_seq,
            message,
            written: false,
        });
        self.next_seq += 1;
        self.hand_over(send);
        self.make_room()
    }

    /// Drops the oldest waiting messages beyond `capacity`; true if these
    /// are the first drops since the connection came up or went down.
    fn make_room(&mut self) -> bool {
        let kept = self
            .queue
            .partition_point(|q| q.written || q.seq < self.next_to_hand);
        let excess = (self.queue.len() - kept).saturating_sub(self.capacity);
        if excess == 0 {
            return false;
        }
        self.queue.drain(kept..kept + excess);
        self.dropped += excess as u64;
        let first = self.dropped_since_change == 0;
        self.dropped_since_change += excess as u64;
        first
    }

    /// A new connection is up: hands it `greeting` (not buffered) but for
    /// the topics that have a retained message queued (newer, or as new),
    /// then every buffered message, oldest first.
    pub(super) fn on_connected(
        &mut self,
        greeting: &[Message],
        mut send: impl FnMut(&Message) -> bool,
    ) {
        self.connected = true;
        self.dropped_since_change = 0;
        for message in greeting {
            let superseded = self
                .queue
                .iter()
                .any(|q| q.message.retain && q.message.topic == message.topic);
            if !superseded && send(message) {
                self.unwritten.push_back(None);
            }
        }
        self.hand_over(send);
    }

    /// The connection is gone: what it was given but did not get
    /// acknowledged goes to the next one; what it held unwritten waits
    /// again, within `capacity`. True if that dropped the first messages
    /// since the connection came up.
    pub(super) fn on_disconnected(&mut self) -> bool {
        self.connected = false;
        self.dropped_since_change = 0;
        self.next_to_hand = self.queue.front().map_or(self.next_seq, |q| q.seq);
        self.unwritten.clear();
        self.unacknowledged.clear();
        self.make_room()
    }

    /// Hands the connection the queued messages it does not have yet, while
    /// `send` accepts them.
    pub(super) fn hand_over(&mut self, mut send: impl FnMut(&Message) -> bool) {
        if !self.connected {
            return;
        }
        let first_unhanded = self.queue.partition_point(|q| q.seq < self.next_to_hand);
        for queued in self.queue.range(first_unhanded..) {
            if !send(&queued.message) {
                break;
            }
            self.unwritten.push_back(Some(queued.seq));
            self.next_to_hand = queued.seq + 1;
        }
    }

    /// The client wrote its next publish with packet id `pkid`.
    pub(super) fn on_written(&mut self, pkid: u16) {
        let Some(Some(seq)) = self.unwritten.pop_front() else {
            return;
        };
        if self.qos == QoS::AtMostOnce {
            self.remove(seq);
            return;
        }
        if let Ok(index) = self.index_of(seq) {
            self.queue[index].written = true;
        }
        self.unacknowledged.insert(pkid, seq);
    }

    /// The broker acknowledged packet `pkid` (PUBACK for QoS 1, PUBCOMP for
    /// QoS 2).
    pub(super) fn on_acknowledged(&mut self, pkid: u16) {
        if let Some(seq) = self.unacknowledged.remove(&pkid) {
            self.remove(seq);
        }
    }

    /// Position of message `seq` in the queue, if still there.
    fn index_of(&self, seq: u64) -> Result<usize, usize> {
        self.queue.binary_search_by_key(&seq, |q| q.seq)
    }

    fn remove(&mut self, seq: u64) {
        if let Ok(index) = self.index_of(seq) {
            self.queue.remove(index);
        }
    }

    /// Gives up on every message still here (at shutdown) and counts them as
    /// dropped; returns how many there were.
    pub(super) fn abandon(&mut self) -> usize {
        let count = self.queue.len();
        self.queue.clear();
        self.dropped += count as u64;
        count
    }

    /// Nothing left to deliver.
    pub(super) fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    pub(super) fn len(&self) -> usize {
        self.queue.len()
    }

    /// Messages that left without reaching the network: the oldest waiting
    /// ones when more than `capacity` waited, and all left at
    /// [`Outbox::abandon`].
    pub(super) fn dropped(&self) -> u64 {
        self.dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn message(n: u64) -> Message {
        Message {
            topic: "t".into(),
            payload: json!(n),
            retain: false,
        }
    }

    /// A retained message numbered `n` on `topic`.
    fn retained(topic: &str, n: u64) -> Message {
        Message {
            topic: topic.into(),
            payload: json!(n),
            retain: true,
        }
    }

    /// Collects what the outbox hands over, like a client with room.
    fn accept(into: &mut Vec<u64>) -> impl FnMut(&Message) -> bool + '_ {
        |m: &Message| {
            into.push(m.payload.as_u64().unwrap_or(u64::MAX));
            true
        }
    }

    #[test]
    fn nothing_is_handed_while_disconnected_and_all_after_connecting() {
        let mut outbox = Outbox::new(10, QoS::AtLeastOnce);
        let mut sent = Vec::new();
        for n in 0..3 {
            outbox.push(message(n), accept(&mut sent));
        }
        assert!(sent.is_empty());
        let greeting = [Message {
            topic: "availability".into(),
            payload: json!("online"),
            retain: true,
        }];
        outbox.on_connected(&greeting, accept(&mut sent));
        assert_eq!(sent, [u64::MAX, 0, 1, 2]);
        for pkid in 1..=4 {
            outbox.on_written(pkid);
        }
        // pkid 1 was the greeting; acknowledging it frees no buffered message.
        outbox.on_acknowledged(1);
        assert_eq!(outbox.len(), 3);
        outbox.on_acknowledged(3);
        outbox.on_acknowledged(2);
        assert_eq!(outbox.len(), 1);
        outbox.on_acknowledged(4);
        assert!(outbox.is_empty());
    }

    #[test]
    fn unacknowledged_messages_go_to_the_next_connection_in_order() {
        let mut outbox = Outbox::new(10, QoS::AtLeastOnce);
        let mut sent = Vec::new();
        outbox.on_connected(&[], accept(&mut sent));
        for n in 0..4 {
            outbox.push(message(n), accept(&mut sent));
        }
        outbox.on_written(1);
        outbox.on_written(2);
        outbox.on_acknowledged(1);
        // 1 written and unacknowledged, 2 and 3 handed but never written.
        outbox.on_disconnected();
        outbox.push(message(4), accept(&mut sent));
        sent.clear();
        outbox.on_connected(&[], accept(&mut sent));
        assert_eq!(sent, [1, 2, 3, 4]);
    }

    #[test]
    fn a_full_buffer_drops_the_oldest_and_warns_once_per_outage() {
        let mut outbox = Outbox::new(3, QoS::AtLeastOnce);
        let mut sent = Vec::new();
        let first_drops: Vec<bool> = (0..5)
            .map(|n| outbox.push(message(n), accept(&mut sent)))
            .collect();
        assert_eq!(first_drops, [false, false, false, true, false]);
        assert_eq!(outbox.dropped(), 2);
        outbox.on_connected(&[], accept(&mut sent));
        assert_eq!(sent, [2, 3, 4]);
    }

    #[test]
    fn messages_the_client_holds_or_wrote_are_never_dropped_for_room() {
        let mut outbox = Outbox::new(2, QoS::AtLeastOnce);
        let mut sent = Vec::new();
        outbox.on_connected(&[], accept(&mut sent));
        for n in 0..3 {
            outbox.push(message(n), accept(&mut sent));
        }
        for pkid in 1..=3 {
            outbox.on_written(pkid);
        }
        // The client's channel is full: 3, 4 and 5 wait; only the oldest
        // waiting one makes room, the three in flight may be delivered yet.
        let first_drops: Vec<bool> = (3..6).map(|n| outbox.push(message(n), |_| false)).collect();
        assert_eq!(first_drops, [false, false, true]);
        assert_eq!(outbox.dropped(), 1);
        // Written ones go to the next connection, whatever the capacity.
        assert!(!outbox.on_disconnected());
        sent.clear();
        outbox.on_connected(&[], accept(&mut sent));
        assert_eq!(sent, [0, 1, 2, 4, 5]);
        assert_eq!(outbox.dropped(), 1);
    }

    #[test]
    fn what_a_lost_connection_held_unwritten_waits_within_the_capacity() {
        let mut outbox = Outbox::new(2, QoS::AtLeastOnce);
        let mut sent = Vec::new();
        outbox.on_connected(&[], accept(&mut sent));
        for n in 0..4 {
            outbox.push(message(n), accept(&mut sent));
        }
        outbox.on_written(1);
        assert_eq!(outbox.dropped(), 0);
        // 0 may have reached the broker; 1, 2 and 3 never left the client.
        assert!(outbox.on_disconnected());
        assert_eq!(outbox.dropped(), 1);
        sent.clear();
        outbox.on_connected(&[], accept(&mut sent));
        assert_eq!(sent, [0, 2, 3]);
    }

    #[test]
    fn a_retained_message_replaces_the_queued_one_of_its_topic() {
        let mut outbox = Outbox::new(10, QoS::AtLeastOnce);
        let mut sent = Vec::new();
        outbox.push(message(0), accept(&mut sent));
        outbox.push(retained("state", 1), accept(&mut sent));
        outbox.push(message(2), accept(&mut sent));
        outbox.push(retained("other", 3), accept(&mut sent));
        outbox.push(retained("state", 4), accept(&mut sent));
        assert_eq!(outbox.len(), 4);
        assert_eq!(outbox.dropped(), 0);
        // The greeting's state is no newer than the queued one: left out.
        let greeting = [retained("availability", 5), retained("state", 6)];
        outbox.on_connected(&greeting, accept(&mut sent));
        assert_eq!(sent, [5, 0, 2, 3, 4]);
    }

    #[test]
    fn what_is_left_at_shutdown_is_counted_as_dropped() {
        let mut outbox = Outbox::new(2, QoS::AtLeastOnce);
        for n in 0..3 {
            outbox.push(message(n), |_| false);
        }
        assert_eq!(outbox.abandon(), 2);
        assert_eq!(outbox.dropped(), 3);
        assert!(outbox.is_empty());
    }

    #[test]
    fn a_refusing_client_gets_the_rest_later() {
        let mut outbox = Outbox::new(10, QoS::AtLeastOnce);
        let mut sent = Vec::new();
        outbox.on_connected(&[], accept(&mut sent));
        outbox.push(message(0), |_| false);
        outbox.push(message(1), |_| false);
        outbox.hand_over(accept(&mut sent));
        assert_eq!(sent, [0, 1]);
    }

    #[test]
    fn qos0_messages_are_done_once_written() {
        let mut outbox = Outbox::new(10, QoS::AtMostOnce);
        outbox.on_connected(&[], |_| true);
        outbox.push(message(0), |_| true);
        outbox.on_written(0);
        assert!(outbox.is_empty());
    }
}
