//! The MQTT sink's own bounded buffer: every message stays here until the
//! broker acknowledges it, and all unacknowledged ones are handed to each new
//! connection again, in order.
//!
//! rumqttc alone would lose them: with a clean session it clears the
//! requests it had queued or in flight when the connection dropped
//! (`EventLoop::clean` moves them to `pending`, and the next CONNACK without
//! `session_present` clears that). So every connection gets a fresh client,
//! and this buffer is the only place messages wait.

use super::super::message::Message;
use rumqttc::QoS;
use std::collections::{HashMap, VecDeque};

/// A buffered message and its sequence number (increasing, never reused).
#[derive(Debug)]
struct Queued {
    seq: u64,
    message: Message,
}

/// Messages waiting for the broker, and which of them the current
/// connection has been given.
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
    dropped_this_outage: u64,
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
            dropped_this_outage: 0,
        }
    }

    /// Buffers `message`, dropping the oldest one if the buffer is full, and
    /// hands it on if connected. True if this was the first drop since the
    /// last connection (worth one warning).
    pub(super) fn push(&mut self, message: Message, send: impl FnMut(&Message) -> bool) -> bool {
        let mut first_drop = false;
        if self.queue.len() == self.capacity {
            self.queue.pop_front();
            self.dropped += 1;
            self.dropped_this_outage += 1;
            first_drop = self.dropped_this_outage == 1;
        }
        self.queue.push_back(Queued {
            seq: self.next_seq,
            message,
        });
        self.next_seq += 1;
        self.hand_over(send);
        first_drop
    }

    /// A new connection is up: hands it `greeting` (not buffered), then every
    /// buffered message, oldest first.
    pub(super) fn on_connected(
        &mut self,
        greeting: &[Message],
        mut send: impl FnMut(&Message) -> bool,
    ) {
        self.connected = true;
        self.dropped_this_outage = 0;
        for message in greeting {
            if send(message) {
                self.unwritten.push_back(None);
            }
        }
        self.hand_over(send);
    }

    /// The connection is gone: what it was given but did not get
    /// acknowledged goes to the next one.
    pub(super) fn on_disconnected(&mut self) {
        self.connected = false;
        self.next_to_hand = self.queue.front().map_or(self.next_seq, |q| q.seq);
        self.unwritten.clear();
        self.unacknowledged.clear();
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
        if let Some(Some(seq)) = self.unwritten.pop_front() {
            if self.qos == QoS::AtMostOnce {
                self.remove(seq);
            } else {
                self.unacknowledged.insert(pkid, seq);
            }
        }
    }

    /// The broker acknowledged packet `pkid` (PUBACK for QoS 1, PUBCOMP for
    /// QoS 2).
    pub(super) fn on_acknowledged(&mut self, pkid: u16) {
        if let Some(seq) = self.unacknowledged.remove(&pkid) {
            self.remove(seq);
        }
    }

    fn remove(&mut self, seq: u64) {
        if let Ok(index) = self.queue.binary_search_by_key(&seq, |q| q.seq) {
            self.queue.remove(index);
        }
    }

    /// Nothing left to deliver.
    pub(super) fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    pub(super) fn len(&self) -> usize {
        self.queue.len()
    }

    /// Messages dropped, oldest first, because the buffer was full.
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
