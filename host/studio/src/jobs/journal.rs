//! Every job event, numbered and kept in a bounded journal as it is broadcast, so that a client
//! that reconnects with the id of the last event it saw (SSE's `Last-Event-ID`) is sent exactly
//! the events it missed, or told that it missed too many and must reload. Ids are
//! `<epoch>-<n>`: `n` counts this process's events from 1 and `epoch` tells one run of the
//! server from the next, whose numbering starts again.

use super::JobEvent;
use std::collections::VecDeque;
use std::sync::Mutex;
use tokio::sync::broadcast;

/// Events kept for reconnecting clients: a few minutes of a busy queue's progress.
const KEPT: usize = 8192;

/// An event with its place in the journal.
#[derive(Debug, Clone)]
pub struct Numbered {
    pub n: u64,
    pub event: JobEvent,
}

/// What a reconnecting client missed.
#[derive(Debug)]
pub enum Missed {
    /// These events, in order (possibly none).
    Events(Vec<Numbered>),
    /// More than the journal keeps, or events of an earlier run of the server: reload.
    Gap,
}

pub struct Journal {
    epoch: u64,
    kept: Mutex<Kept>,
    sender: broadcast::Sender<Numbered>,
}

struct Kept {
    next: u64,
    events: VecDeque<Numbered>,
}

impl Default for Journal {
    fn default() -> Journal {
        Journal::new()
    }
}

impl Journal {
    pub fn new() -> Journal {
        let epoch = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        Journal {
            epoch,
            kept: Mutex::new(Kept {
                next: 1,
                events: VecDeque::with_capacity(KEPT),
            }),
            sender: broadcast::channel(1024).0,
        }
    }

    /// Numbers, keeps and broadcasts `event`. Sent under the journal's lock, so subscribers
    /// receive events in the order of their numbers.
    pub fn publish(&self, event: JobEvent) {
        let mut kept = self.kept.lock().unwrap_or_else(|p| p.into_inner());
        let numbered = Numbered {
            n: kept.next,
            event,
        };
        kept.next += 1;
        if kept.events.len() == KEPT {
            kept.events.pop_front();
        }
        kept.events.push_back(numbered.clone());
        let _ = self.sender.send(numbered);
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Numbered> {
        self.sender.subscribe()
    }

    /// A receiver of the events after those counted up to `last_id` (a `Last-Event-ID`), what
    /// was missed before it subscribed (with no `last_id`, nothing), and the number of the last
    /// event published before it subscribed.
    pub fn resume(&self, last_id: Option<&str>) -> (broadcast::Receiver<Numbered>, Missed, u64) {
        let kept = self.kept.lock().unwrap_or_else(|p| p.into_inner());
        let receiver = self.sender.subscribe();
        let missed = match last_id {
            Some(last_id) => self.after(&kept, last_id),
            None => Missed::Events(Vec::new()),
        };
        (receiver, missed, kept.next - 1)
    }

    /// What came after `last_id` (for a receiver that lagged behind the broadcast).
    pub fn since(&self, last_id: &str) -> Missed {
        let kept = self.kept.lock().unwrap_or_else(|p| p.into_inner());
        self.after(&kept, last_id)
    }

    fn after(&self, kept: &Kept, last_id: &str) -> Missed {
        let Some(last) = self.parse(last_id) else {
            return Missed::Gap;
        };
        let oldest = kept.events.front().map_or(kept.next, |e| e.n);
        if last + 1 < oldest || last >= kept.next {
            return Missed::Gap;
        }
        Missed::Events(kept.events.iter().filter(|e| e.n > last).cloned().collect())
    }

    /// The SSE id of event `n`.
    pub fn id(&self, n: u64) -> String {
        format!("{}-{n}", self.epoch)
    }

    /// `n` of an id of this run of the server.
    fn parse(&self, id: &str) -> Option<u64> {
        let (epoch, n) = id.trim().split_once('-')?;
        (epoch.parse::<u64>().ok()? == self.epoch).then(|| n.parse().ok())?
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jobs::JobState;

    fn state(job_id: i64) -> JobEvent {
        JobEvent::State {
            job_id,
            state: JobState::Queued,
            attempts: 0,
            error: None,
        }
    }

    fn jobs_of(missed: Missed) -> Vec<i64> {
        match missed {
            Missed::Events(events) => events.iter().map(|e| e.event.job_id()).collect(),
            Missed::Gap => panic!("a gap"),
        }
    }

    #[test]
    fn a_reconnecting_client_gets_exactly_what_it_missed() {
        let journal = Journal::new();
        for job in 1..=5 {
            journal.publish(state(job));
        }
        let (_, missed, _) = journal.resume(Some(&journal.id(2)));
        assert_eq!(jobs_of(missed), [3, 4, 5]);
        let (_, missed, _) = journal.resume(Some(&journal.id(5)));
        assert_eq!(jobs_of(missed), Vec::<i64>::new());
        let (_, missed, _) = journal.resume(Some(&journal.id(0)));
        assert_eq!(jobs_of(missed), [1, 2, 3, 4, 5]);
        let (_, missed, _) = journal.resume(None);
        assert_eq!(jobs_of(missed), Vec::<i64>::new());
    }

    #[test]
    fn ids_from_another_run_or_the_future_or_forgotten_are_gaps() {
        let journal = Journal::new();
        journal.publish(state(1));
        for id in ["1-1", "garbage", "", &journal.id(7)] {
            assert!(matches!(journal.since(id), Missed::Gap), "{id}");
        }
        for job in 0..KEPT as i64 + 10 {
            journal.publish(state(job));
        }
        assert!(matches!(journal.since(&journal.id(3)), Missed::Gap));
        let recent = journal.id(KEPT as u64 + 5);
        assert_eq!(jobs_of(journal.since(&recent)).len(), 6);
    }

    #[tokio::test]
    async fn subscribers_receive_events_numbered_in_order() {
        let journal = Journal::new();
        let (mut receiver, _, head) = journal.resume(None);
        assert_eq!(head, 0);
        journal.publish(state(1));
        journal.publish(state(2));
        assert_eq!(receiver.recv().await.unwrap().n, 1);
        assert_eq!(receiver.recv().await.unwrap().n, 2);
    }
}
