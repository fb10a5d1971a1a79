//! The studio under load on loopback, for a bounded time: 200 API clients reading and writing,
//! 50 event-stream subscribers that hang up and reconnect with `Last-Event-ID`, and jobs
//! submitted and cancelled throughout. Nothing is lost: every accepted write is in the
//! database, every subscriber receives every event exactly once and in order across its
//! reconnections, and every job ends in a final state. Prints the p50/p99 latency of reads and
//! writes. `VIDEOSDGX_LOAD_SECONDS` sets the length (5 s by default; docs/PERFORMANCE.md
//! reports a 60 s run).

#[path = "support/studio.rs"]
mod studio;

use serde_json::json;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use studio::{Server, SseEvent, SseStream, start};

const CLIENTS: usize = 200;
const SUBSCRIBERS: usize = 50;

/// `n` of an event id `<epoch>-<n>`.
fn number(event: &SseEvent) -> u64 {
    let id = event.id.as_deref().expect("journal events carry an id");
    id.rsplit_once('-').unwrap().1.parse().unwrap()
}

#[test]
fn a_reconnecting_subscriber_gets_exactly_the_events_it_missed() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path());
    let reindex = |s: &Server| {
        let r = s.post("/api/jobs", &json!({ "kind": "assets.reindex" }));
        let id = r.json()["id"].as_i64().unwrap();
        s.wait_job(id, "done", |j| j["state"] == "succeeded");
    };
    let stream = s.sse("/api/jobs/events", None);
    reindex(&s);
    let mut seen = Vec::new();
    while let Some(event) = stream.next(Duration::from_secs(2)) {
        seen.push(event);
    }
    assert!(!seen.is_empty());
    let last = seen.last().unwrap().id.clone().unwrap();
    stream.close();

    // Two jobs run while nobody listens; the reconnect replays their events, then goes on live.
    reindex(&s);
    reindex(&s);
    let resumed = s.sse("/api/jobs/events", Some(&last));
    reindex(&s);
    let mut missed = Vec::new();
    while let Some(event) = resumed.next(Duration::from_secs(2)) {
        missed.push(event);
    }
    let numbers: Vec<u64> = missed.iter().map(number).collect();
    let first = number(seen.last().unwrap()) + 1;
    assert_eq!(
        numbers,
        (first..first + numbers.len() as u64).collect::<Vec<_>>()
    );
    let finished = missed
        .iter()
        .filter(|e| e.data.contains("\"succeeded\""))
        .count();
    assert_eq!(finished, 3, "{missed:?}");

    // An id the server no longer knows (another run's, or garbage): `reset`, then live events.
    for stale in ["1-5", "nonsense"] {
        let stream = s.sse("/api/jobs/events", Some(stale));
        let first = stream.next(Duration::from_secs(5)).unwrap();
        assert_eq!(first.event, "reset", "{stale}");
        stream.close();
    }
    s.stop();
}

/// Latencies of one kind of request.
#[derive(Default)]
struct Latencies(Mutex<Vec<Duration>>);

impl Latencies {
    fn time<T>(&self, f: impl FnOnce() -> T) -> T {
        let start = Instant::now();
        let out = f();
        self.0.lock().unwrap().push(start.elapsed());
        out
    }

    fn summary(&self, what: &str) -> String {
        let mut all = self.0.lock().unwrap().clone();
        all.sort();
        let at = |q: f64| all[((all.len() - 1) as f64 * q) as usize].as_secs_f64() * 1e3;
        format!(
            "{what}: {} requests, p50 {:.1} ms, p99 {:.1} ms",
            all.len(),
            at(0.5),
            at(0.99)
        )
    }
}

/// A subscriber's life: listen, hang up at a random moment, reconnect with the last id, until
/// `deadline`; then listen until the stream is quiet. Returns the event numbers received.
fn subscribe(s: &Server, seed: u64, deadline: Instant) -> Vec<u64> {
    let mut rng = seed;
    let mut next_hangup = || {
        rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1);
        Duration::from_millis(200 + (rng >> 33) % 1300)
    };
    let mut numbers = Vec::new();
    let mut last_id: Option<String> = None;
    let mut stream: SseStream = s.sse("/api/jobs/events", None);
    let mut hangup = Instant::now() + next_hangup();
    loop {
        let now = Instant::now();
        if now >= deadline {
            // The load is over: drain what is still on its way, then stop.
            while let Some(event) = stream.next(Duration::from_secs(3)) {
                assert_ne!(event.event, "reset", "a subscriber missed events");
                numbers.push(number(&event));
            }
            stream.close();
            return numbers;
        }
        if now >= hangup {
            stream.close();
            stream = s.sse("/api/jobs/events", last_id.as_deref());
            hangup = Instant::now() + next_hangup();
            continue;
        }
        if let Some(event) = stream.next(Duration::from_millis(50)) {
            assert_ne!(event.event, "reset", "a subscriber missed events");
            numbers.push(number(&event));
            last_id = event.id;
        }
    }
}

#[test]
fn under_load_every_write_is_kept_every_event_delivered_and_every_job_ends() {
    let seconds: u64 = std::env::var("VIDEOSDGX_LOAD_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path());
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let (reads, writes) = (Latencies::default(), Latencies::default());
    let accepted = Mutex::new(Vec::new());
    let refused = Mutex::new(Vec::new());

    let streams = std::thread::scope(|scope| {
        let subscribers: Vec<_> = (0..SUBSCRIBERS as u64)
            .map(|i| {
                let s = &s;
                scope.spawn(move || subscribe(s, i + 1, deadline))
            })
            .collect();
        for client in 0..CLIENTS {
            let (s, reads, writes, accepted, refused) = (&s, &reads, &writes, &accepted, &refused);
            scope.spawn(move || {
                let mut mine: Vec<i64> = Vec::new();
                let mut i = 0usize;
                while Instant::now() < deadline {
                    i += 1;
                    match (client + i) % 10 {
                        0..=3 => {
                            let path = match mine.last() {
                                Some(id) if i.is_multiple_of(2) => format!("/api/projects/{id}"),
                                _ => "/api/jobs?limit=20".to_string(),
                            };
                            let r = reads.time(|| s.get(&path));
                            assert_eq!(r.status, 200, "{path}");
                        }
                        4..=6 => {
                            let name = format!("client {client} project {i}");
                            let r =
                                writes.time(|| s.post("/api/projects", &json!({ "name": name })));
                            match r.status {
                                201 => {
                                    let id = r.json()["id"].as_i64().unwrap();
                                    mine.push(id);
                                    accepted.lock().unwrap().push((id, name));
                                }
                                // Refused writes must say so properly; they are not counted kept.
                                503 => refused.lock().unwrap().push(r.error_code()),
                                other => panic!("creating a project answered {other}"),
                            }
                        }
                        7 | 8 => {
                            let r = writes
                                .time(|| s.post("/api/jobs", &json!({ "kind": "assets.reindex" })));
                            if r.status == 201 && i.is_multiple_of(3) {
                                let id = r.json()["id"].as_i64().unwrap();
                                let c = writes
                                    .time(|| s.post(&format!("/api/jobs/{id}/cancel"), &json!({})));
                                // Already finished jobs cannot be cancelled: 409.
                                assert!(matches!(c.status, 200 | 409), "cancel: {}", c.status);
                            }
                        }
                        _ => {
                            let r = reads.time(|| s.get("/api/health"));
                            assert_eq!(r.status, 200);
                        }
                    }
                }
            });
        }
        subscribers
            .into_iter()
            .map(|h| h.join().unwrap())
            .collect::<Vec<_>>()
    });

    // Every job ends in a final state.
    let settle = Instant::now() + Duration::from_secs(60);
    loop {
        let open = s
            .get("/api/jobs?state=queued&limit=1")
            .json()
            .as_array()
            .unwrap()
            .len()
            + s.get("/api/jobs?state=running&limit=1")
                .json()
                .as_array()
                .unwrap()
                .len();
        if open == 0 {
            break;
        }
        assert!(Instant::now() < settle, "jobs never finished");
        std::thread::sleep(Duration::from_millis(100));
    }
    s.stop();

    // Every subscriber saw one unbroken run of events, the same last one as the others.
    let last = streams
        .iter()
        .filter_map(|n| n.last())
        .max()
        .copied()
        .unwrap();
    for (i, numbers) in streams.iter().enumerate() {
        let first = numbers[0];
        assert_eq!(
            numbers,
            &(first..=last).collect::<Vec<_>>(),
            "subscriber {i} lost, repeated or reordered events"
        );
    }
    // Every accepted write is in the database.
    let db = rusqlite::Connection::open(dir.path().join("studio.db")).unwrap();
    let accepted = accepted.into_inner().unwrap();
    for (id, name) in &accepted {
        let stored: String = db
            .query_row("SELECT name FROM projects WHERE id = ?1", [id], |r| {
                r.get(0)
            })
            .unwrap();
        assert_eq!(&stored, name);
    }
    let refused = refused.into_inner().unwrap();
    println!(
        "{} s, {CLIENTS} clients, {SUBSCRIBERS} subscribers: {}; {}; {} writes kept, {} refused \
         ({refused:?}), {} events to every subscriber",
        seconds,
        reads.summary("reads"),
        writes.summary("writes"),
        accepted.len(),
        refused.len(),
        last,
    );
}
