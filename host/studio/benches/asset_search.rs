//! Asset library at 100,000 assets: search latency (p50/p99 of a text query with two filters,
//! plus criterion's estimate), index rebuild rate, and the import rate of real files through the
//! full pipeline (stage, hash, validate, store, row, index).
//!
//! Run: `cargo bench -p videosdgx-studio --bench asset_search`. Set `ASSET_BENCH_N` for a
//! different library size.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use rusqlite::params;
use std::time::{Duration, Instant};
use videosdgx_studio::assets::{MediaKind, NewAsset, SearchQuery};
use videosdgx_studio::{App, StudioConfig, projects};

const WORDS: &[&str] = &[
    "fox",
    "forest",
    "snow",
    "city",
    "night",
    "neon",
    "rain",
    "ocean",
    "wave",
    "sunset",
    "mountain",
    "river",
    "bridge",
    "car",
    "train",
    "robot",
    "dragon",
    "castle",
    "desert",
    "storm",
    "cloud",
    "flower",
    "garden",
    "portrait",
    "smile",
    "dance",
    "market",
    "street",
    "lantern",
    "fire",
    "ice",
    "glass",
    "mirror",
    "shadow",
    "light",
    "golden",
    "silver",
    "red",
    "blue",
    "green",
    "slow",
    "motion",
    "aerial",
    "close",
    "wide",
    "shot",
    "cinematic",
    "vintage",
    "film",
    "grain",
];
const TAGS: &[&str] = &[
    "broll", "hero", "draft", "final", "nature", "urban", "people", "animal", "sky", "water",
];
const MODELS: &[&str] = &[
    "wan2.1-t2v-1.3b",
    "wan2.1-t2v-14b",
    "wan2.2-ti2v-5b",
    "imported",
];

/// Small deterministic generator so runs are comparable.
struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        // Squared index: a skewed (Zipf-like) word frequency, as in real captions.
        let r = (self.next() % 1000) as f64 / 1000.0;
        items[((r * r) * items.len() as f64) as usize]
    }
    fn sentence(&mut self, min: u64, max: u64) -> String {
        let n = min + self.next() % (max - min);
        (0..n)
            .map(|_| self.pick(WORDS))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// Fills the database with `n` asset rows (metadata only) and rebuilds the index from it.
fn populate(app: &App, n: usize) -> (Vec<i64>, Duration) {
    let projects: Vec<i64> = (0..20)
        .map(|i| {
            projects::create_project(&app.db, &format!("project {i}"))
                .unwrap()
                .id
        })
        .collect();
    let mut rng = Lcg(7);
    let year_ms = 365 * 24 * 3600 * 1000i64;
    let start = 1_750_000_000_000i64;
    app.db
        .transaction(|tx| {
            let mut stmt = tx.prepare(
                "INSERT INTO assets (sha256, kind, mime, size_bytes, original_name, project_id,
                    caption, tags, prompt, model, created_at)
                 VALUES (?1, ?2, 'image/png', 1000, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            )?;
            for i in 0..n {
                let kind = ["image", "video", "audio"][(rng.next() % 3) as usize];
                let tags: Vec<&str> = (0..1 + rng.next() % 3).map(|_| rng.pick(TAGS)).collect();
                stmt.execute(params![
                    format!("{i:064x}"),
                    kind,
                    format!("asset{i}.png"),
                    projects[(rng.next() % 20) as usize],
                    rng.sentence(6, 14),
                    serde_json::to_string(&tags).unwrap(),
                    rng.sentence(10, 24),
                    rng.pick(MODELS),
                    start + (rng.next() as i64 % year_ms),
                ])?;
            }
            Ok(())
        })
        .unwrap();
    let t = Instant::now();
    let indexed = app.assets.reindex(&app.db).unwrap();
    assert_eq!(indexed as usize, n);
    (projects, t.elapsed())
}

fn query(rng: &mut Lcg, projects: &[i64]) -> SearchQuery {
    SearchQuery {
        text: format!("{} {}", rng.pick(WORDS), rng.pick(WORDS)),
        kind: Some([MediaKind::Image, MediaKind::Video][(rng.next() % 2) as usize]),
        project_id: Some(projects[(rng.next() % projects.len() as u64) as usize]),
        limit: 20,
        ..Default::default()
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn bench(c: &mut Criterion) {
    let n: usize = std::env::var("ASSET_BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let dir = tempfile::tempdir().unwrap();
    let app = App::open(StudioConfig::new(dir.path())).unwrap();
    let (projects, rebuild) = populate(&app, n);
    println!(
        "index rebuild: {n} assets in {:.2} s ({:.0} assets/s)",
        rebuild.as_secs_f64(),
        n as f64 / rebuild.as_secs_f64()
    );

    // Latency distribution over many different queries (criterion reports means, not tails).
    let mut rng = Lcg(11);
    for _ in 0..200 {
        app.assets
            .search(&app.db, &query(&mut rng, &projects))
            .unwrap(); // warm caches
    }
    let mut times: Vec<Duration> = (0..5000)
        .map(|_| {
            let q = query(&mut rng, &projects);
            let t = Instant::now();
            let hits = app.assets.search(&app.db, &q).unwrap();
            let elapsed = t.elapsed();
            std::hint::black_box(hits);
            elapsed
        })
        .collect();
    times.sort();
    println!(
        "search (2 words + kind + project, top 20) over {n} assets: p50 {:?}  p99 {:?}  max {:?}",
        percentile(&times, 0.50),
        percentile(&times, 0.99),
        times[times.len() - 1]
    );

    let mut group = c.benchmark_group("asset_search");
    group.bench_function(format!("text_kind_project_{n}"), |b| {
        let mut rng = Lcg(13);
        b.iter(|| {
            app.assets
                .search(&app.db, &query(&mut rng, &projects))
                .unwrap()
        })
    });
    group.finish();

    // Import of real PNG files, one at a time as uploads arrive (each commits the index).
    let files = tempfile::tempdir().unwrap();
    let mut seed = 0u32;
    let mut group = c.benchmark_group("asset_import");
    group.sample_size(10).throughput(Throughput::Elements(20));
    group.bench_function("single_file_imports_x20", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let batch: Vec<_> = (0..20)
                    .map(|_| {
                        seed += 1;
                        let path = files.path().join(format!("{seed}.png"));
                        image::RgbImage::from_fn(64, 64, |x, y| {
                            image::Rgb([(x * seed) as u8, (y * 7) as u8, seed as u8])
                        })
                        .save(&path)
                        .unwrap();
                        path
                    })
                    .collect();
                let t = Instant::now();
                for path in &batch {
                    let meta = NewAsset {
                        name: path.file_name().unwrap().to_string_lossy().into_owned(),
                        caption: "benchmark import".into(),
                        ..Default::default()
                    };
                    app.assets.import_file(&app.db, path, &meta).unwrap();
                }
                total += t.elapsed();
            }
            total
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
