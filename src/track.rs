//! Tracking: faces across frames, with smoothed expressions and events.
//!
//! Detections are matched to tracks greedily by IoU (class-agnostic: a
//! face keeps its id when its expression changes). Each track smooths its
//! 7 expression scores with an exponential moving average and changes its
//! reported expression only when another one leads the current one by a
//! margin (hysteresis), so a signal does not flicker frame to frame. Like
//! Frigate's events, a track emits `new` once it has been seen on enough
//! frames, `update` when its expression changes, and `end` when it has not
//! been seen for a while.

use crate::config::{in_range, InvalidKey};
use crate::face::{Expression, ExpressionScores, Face};
use serde::{Deserialize, Serialize};

/// How faces are associated and smoothed: the `[tracker]` table.
#[derive(Clone, Copy, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrackerConfig {
    /// Minimum IoU between a track's last box and a detection to match them.
    pub match_iou: f32,
    /// Frames a face must be seen on before its `new` event (filters one-frame
    /// false positives).
    pub min_hits: u32,
    /// Seconds without a match after which a track ends.
    #[serde(rename = "lost_after_s")]
    pub lost_after: f64,
    /// Weight of the newest frame in the moving average of scores, in (0, 1].
    pub smoothing: f32,
    /// How far another expression's smoothed score must lead the current one
    /// before the track switches to it.
    pub switch_margin: f32,
    /// Most faces tracked at once (1 to [`MAX_TRACKED_FACES`]): in a crowd,
    /// the faces with the highest scores are tracked, the others ignored.
    pub max_faces: usize,
}

/// The capacity of the tracker's table: a fixed array, so a crowd in front
/// of the camera cannot grow the service's memory.
pub const MAX_TRACKED_FACES: usize = 64;

impl Default for TrackerConfig {
    fn default() -> Self {
        TrackerConfig {
            match_iou: 0.3,
            min_hits: 3,
            lost_after: 1.0,
            smoothing: 0.3,
            switch_margin: 0.1,
            max_faces: 16,
        }
    }
}

impl TrackerConfig {
    /// Checks the ranges; the error names the bad key.
    pub fn check(&self) -> Result<(), InvalidKey> {
        in_range("tracker.match_iou", self.match_iou, 0.0..=1.0)?;
        in_range("tracker.min_hits", self.min_hits, 1..=1000)?;
        in_range("tracker.lost_after_s", self.lost_after, 0.01..=3600.0)?;
        in_range("tracker.smoothing", self.smoothing, 0.001..=1.0)?;
        in_range("tracker.switch_margin", self.switch_margin, 0.0..=1.0)?;
        in_range("tracker.max_faces", self.max_faces, 1..=MAX_TRACKED_FACES)
    }
}

/// What happened to a tracked face.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EventKind {
    New,
    Update,
    End,
}

/// One event of one tracked face; times are seconds (the caller's clock).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TrackEvent {
    #[serde(rename = "type")]
    pub kind: EventKind,
    pub id: u64,
    #[serde(rename = "box")]
    pub bbox: [f32; 4],
    pub expression: Expression,
    /// Smoothed score of `expression`.
    pub score: f32,
    /// Smoothed scores of all expressions.
    pub scores: ExpressionScores,
    pub start_time: f64,
    pub timestamp: f64,
}

#[derive(Debug)]
struct Track {
    id: u64,
    bbox: [f32; 4],
    scores: ExpressionScores,
    expression: Expression,
    hits: u32,
    announced: bool,
    first_seen: f64,
    last_seen: f64,
}

impl Track {
    fn event(&self, kind: EventKind, timestamp: f64) -> TrackEvent {
        TrackEvent {
            kind,
            id: self.id,
            bbox: self.bbox,
            expression: self.expression,
            score: self.scores.get(self.expression),
            scores: self.scores,
            start_time: self.first_seen,
            timestamp,
        }
    }

    /// Folds in a matched detection; true when the reported expression changed.
    fn observe(&mut self, face: &Face, now: f64, config: &TrackerConfig) -> bool {
        let alpha = config.smoothing;
        for (smoothed, new) in self.scores.0.iter_mut().zip(face.scores.0) {
            *smoothed += alpha * (new - *smoothed);
        }
        self.bbox = face.bbox;
        self.hits += 1;
        self.last_seen = now;
        let (leader, lead_score) = self.scores.best();
        let switch = leader != self.expression
            && lead_score >= self.scores.get(self.expression) + config.switch_margin;
        if switch {
            self.expression = leader;
        }
        switch
    }
}

/// Keeps the faces of one camera across frames.
#[derive(Debug)]
pub struct Tracker {
    config: TrackerConfig,
    tracks: heapless::Vec<Track, MAX_TRACKED_FACES>,
    next_id: u64,
}

impl Tracker {
    pub fn new(config: TrackerConfig) -> Self {
        Tracker {
            config,
            tracks: heapless::Vec::new(),
            next_id: 1,
        }
    }

    /// Number of faces being tracked that have had their `new` event.
    pub fn visible(&self) -> usize {
        self.tracks.iter().filter(|t| t.announced).count()
    }

    /// Takes the faces of the frame seen at `now` (seconds) and returns the
    /// events it causes, `end`s first.
    pub fn update(&mut self, faces: &[Face], now: f64) -> Vec<TrackEvent> {
        let lost_after = self.config.lost_after;
        let mut events = self.expire(|t| now - t.last_seen > lost_after, now);
        let mut unmatched_faces: Vec<bool> = vec![true; faces.len()];
        for (track_index, face_index) in self.greedy_matches(faces) {
            unmatched_faces[face_index] = false;
            let track = &mut self.tracks[track_index];
            let switched = track.observe(&faces[face_index], now, &self.config);
            if !track.announced && track.hits >= self.config.min_hits {
                track.announced = true;
                events.push(track.event(EventKind::New, now));
            } else if track.announced && switched {
                events.push(track.event(EventKind::Update, now));
            }
        }
        // Faces come highest score first: in a crowd, the best are tracked.
        let room = self.config.max_faces.saturating_sub(self.tracks.len());
        for (face, _) in faces
            .iter()
            .zip(&unmatched_faces)
            .filter(|(_, &unmatched)| unmatched)
            .take(room)
        {
            let track = Track {
                id: self.next_id,
                bbox: face.bbox,
                scores: face.scores,
                expression: face.expression,
                hits: 1,
                announced: self.config.min_hits <= 1,
                first_seen: now,
                last_seen: now,
            };
            self.next_id += 1;
            if track.announced {
                events.push(track.event(EventKind::New, now));
            }
            if self.tracks.push(track).is_err() {
                unreachable!("max_faces is at most the table's capacity");
            }
        }
        events
    }

    /// Ends every track (at shutdown); returns their `end` events.
    pub fn finish(&mut self, now: f64) -> Vec<TrackEvent> {
        self.expire(|_| true, now)
    }

    /// Removes the tracks `expired` selects; `end` events for announced ones.
    fn expire(&mut self, expired: impl Fn(&Track) -> bool, now: f64) -> Vec<TrackEvent> {
        let mut ended = Vec::new();
        self.tracks.retain(|track| {
            let gone = expired(track);
            if gone && track.announced {
                ended.push(track.event(EventKind::End, now));
            }
            !gone
        });
        ended
    }

    /// (track, face) pairs, best IoU first, each used once, IoU >= match_iou.
    fn greedy_matches(&self, faces: &[Face]) -> Vec<(usize, usize)> {
        let mut pairs: Vec<(f32, usize, usize)> = Vec::new();
        for (t, track) in self.tracks.iter().enumerate() {
            for (f, face) in faces.iter().enumerate() {
                let iou = Face::iou(&track.bbox, &face.bbox);
                if iou >= self.config.match_iou {
                    pairs.push((iou, t, f));
                }
            }
        }
        pairs.sort_by(|a, b| b.0.total_cmp(&a.0));
        let (mut track_used, mut face_used) =
            (vec![false; self.tracks.len()], vec![false; faces.len()]);
        let mut matches = Vec::new();
        for (_, t, f) in pairs {
            if !track_used[t] && !face_used[f] {
                track_used[t] = true;
                face_used[f] = true;
                matches.push((t, f));
            }
        }
        matches
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A face at `x` with `expression` scored `p` and the rest sharing 1 - p.
    fn face(x: f32, expression: Expression, p: f32) -> Face {
        let mut scores = [(1.0 - p) / 6.0; 7];
        scores[expression.index()] = p;
        Face {
            bbox: [x, 10.0, x + 50.0, 70.0],
            expression,
            score: p,
            scores: ExpressionScores(scores),
        }
    }

    #[test]
    fn a_crowd_is_tracked_up_to_max_faces_best_first() {
        let mut tracker = Tracker::new(TrackerConfig {
            min_hits: 1,
            max_faces: 3,
            ..Default::default()
        });
        // 10 faces side by side, scores falling from left to right.
        let crowd: Vec<Face> = (0..10)
            .map(|i| face(100.0 * i as f32, Expression::Neutral, 0.9 - 0.05 * i as f32))
            .collect();
        let events = tracker.update(&crowd, 0.0);
        let tracked: Vec<f32> = events.iter().map(|e| e.bbox[0]).collect();
        assert_eq!(tracked, [0.0, 100.0, 200.0]);
        assert_eq!(tracker.visible(), 3);
        assert!(tracker.update(&crowd, 0.1).is_empty());
        assert_eq!(tracker.finish(0.2).len(), 3);
    }

    fn kinds(events: &[TrackEvent]) -> Vec<(EventKind, u64, Expression)> {
        events
            .iter()
            .map(|e| (e.kind, e.id, e.expression))
            .collect()
    }

    /// Runs frames at 10 fps and collects every event.
    fn run(tracker: &mut Tracker, frames: &[Vec<Face>]) -> Vec<TrackEvent> {
        let mut events = Vec::new();
        for (i, faces) in frames.iter().enumerate() {
            events.extend(tracker.update(faces, i as f64 * 0.1));
        }
        events
    }

    #[test]
    fn new_update_end_for_a_face_that_changes_expression() {
        use Expression::*;
        let mut frames: Vec<Vec<Face>> = (0..10)
            .map(|i| vec![face(100.0 + i as f32, Happiness, 0.8)])
            .collect();
        frames.extend((0..10).map(|i| vec![face(110.0 + i as f32, Surprise, 0.8)]));
        frames.extend((0..15).map(|_| vec![]));
        let events = run(&mut Tracker::new(TrackerConfig::default()), &frames);
        assert_eq!(
            kinds(&events),
            [
                (EventKind::New, 1, Happiness),
                (EventKind::Update, 1, Surprise),
                (EventKind::End, 1, Surprise)
            ]
        );
        assert!(
            (events[0].timestamp - 0.2).abs() < 1e-9,
            "new after min_hits = 3 frames"
        );
        assert!(
            events[2].timestamp > 2.9,
            "end once lost for more than a second"
        );
        assert_eq!(events[2].start_time, 0.0);
    }

    #[test]
    fn alternating_noisy_scores_do_not_flicker() {
        use Expression::*;
        // Frame-to-frame the top class alternates between two close classes.
        let frames: Vec<Vec<Face>> = (0..40)
            .map(|i| {
                let mut f = face(100.0, Neutral, 0.45);
                let other = if i % 2 == 0 { Neutral } else { Sadness };
                f.scores.0[Sadness.index()] = if other == Sadness { 0.5 } else { 0.4 };
                vec![f]
            })
            .collect();
        let events = run(&mut Tracker::new(TrackerConfig::default()), &frames);
        assert_eq!(kinds(&events), [(EventKind::New, 1, Neutral)]);
    }

    #[test]
    fn two_faces_keep_their_ids_and_a_one_frame_blip_is_ignored() {
        use Expression::*;
        let mut frames: Vec<Vec<Face>> = (0..6)
            .map(|i| {
                vec![
                    face(10.0 + i as f32, Anger, 0.9),
                    face(300.0 - i as f32, Fear, 0.9),
                ]
            })
            .collect();
        frames[2].push(face(600.0, Disgust, 0.9)); // seen once only
        let mut tracker = Tracker::new(TrackerConfig::default());
        let events = run(&mut tracker, &frames);
        assert_eq!(
            kinds(&events),
            [(EventKind::New, 1, Anger), (EventKind::New, 2, Fear)]
        );
        assert_eq!(tracker.visible(), 2);
        let ends = tracker.finish(1.0);
        assert_eq!(
            kinds(&ends),
            [(EventKind::End, 1, Anger), (EventKind::End, 2, Fear)]
        );
        assert_eq!(tracker.visible(), 0);
    }

    #[test]
    fn events_serialise_like_frigate() {
        let mut tracker = Tracker::new(TrackerConfig {
            min_hits: 1,
            ..Default::default()
        });
        let events = tracker.update(&[face(0.0, Expression::Happiness, 0.9)], 12.5);
        let json = serde_json::to_value(&events[0]).unwrap();
        assert_eq!(json["type"], "new");
        assert_eq!(json["id"], 1);
        assert_eq!(json["expression"], "happiness");
        assert_eq!(json["box"][2], 50.0);
        assert_eq!(json["timestamp"], 12.5);
        assert!(json["scores"]["fear"].is_number());
    }
}
