//! A small mutation fuzzer that runs on stable Rust as an ordinary test binary: each target's
//! committed corpus (`tests/fuzz/corpus/<target>/`) runs first, unchanged, then inputs made by
//! stacking random mutations of it (bit flips, interesting integers, the format's own tokens,
//! deletions, duplications, splices). Every input is held to three bounds: no panic, no more
//! than [`Options::timeout`] of wall time, and no more than [`MEMORY_BOUND`] of new live heap.
//! An input that breaks one is saved under the target directory, and the target stops there.
//! It has no coverage feedback; its strength is the seeds, the dictionaries and the bounds.

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::Write;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::{Duration, Instant};

/// New live heap one input may hold at once, over what was live when it started.
pub const MEMORY_BOUND: usize = 1 << 30;
/// Inputs grow to at most this many bytes past their largest seed.
const GROWTH: usize = 4096;

/// What a target's setup returns: the function that takes one input.
pub type Run = Box<dyn FnMut(&[u8])>;

/// One fuzz target: `setup` prepares what every input shares (a data directory, a server) and
/// returns the function that takes one input.
pub struct Target {
    pub name: &'static str,
    pub setup: fn() -> Run,
    /// The format's keywords and delimiters, spliced into inputs.
    pub dictionary: &'static [&'static [u8]],
}

pub struct Options {
    /// Targets to run (all when empty).
    pub only: Vec<String>,
    /// Mutated inputs per target, after the seeds.
    pub iterations: u64,
    /// Run each target this long instead of a count.
    pub duration: Option<Duration>,
    pub seed: u64,
    /// Longest one input may take.
    pub timeout: Duration,
}

impl Options {
    /// `[TARGET...] [--iters N] [--secs S] [--seed N|random] [--timeout S]`; flags meant for the
    /// libtest harness (`--nocapture`, `--quiet`) are ignored, so `cargo test` can pass them.
    pub fn parse(args: impl Iterator<Item = String>) -> Result<Options, String> {
        let mut options = Options {
            only: Vec::new(),
            iterations: 2000,
            duration: None,
            seed: 0x5eed,
            timeout: Duration::from_secs(10),
        };
        let mut args = args.peekable();
        while let Some(arg) = args.next() {
            let mut value = |flag: &str| args.next().ok_or_else(|| format!("{flag} needs a value"));
            let number = |flag: &str, text: String| {
                text.parse::<u64>()
                    .map_err(|_| format!("{flag} takes a whole number, not {text:?}"))
            };
            match arg.as_str() {
                "--iters" => options.iterations = number("--iters", value("--iters")?)?,
                "--secs" => {
                    options.duration =
                        Some(Duration::from_secs(number("--secs", value("--secs")?)?))
                }
                "--timeout" => {
                    options.timeout = Duration::from_secs(number("--timeout", value("--timeout")?)?)
                }
                "--seed" => {
                    let text = value("--seed")?;
                    options.seed = if text == "random" {
                        std::time::SystemTime::now()
                            .duration_since(std::time::UNIX_EPOCH)
                            .map_or(1, |d| d.as_nanos() as u64)
                    } else {
                        number("--seed", text)?
                    };
                }
                flag if flag.starts_with('-') => {}
                name => options.only.push(name.to_owned()),
            }
        }
        Ok(options)
    }
}

/// Runs the chosen targets and returns the process exit code.
pub fn main(targets: &[Target]) -> i32 {
    let options = match Options::parse(std::env::args().skip(1)) {
        Ok(options) => options,
        Err(message) => {
            eprintln!("fuzz: {message}");
            return 2;
        }
    };
    if let Some(unknown) = options
        .only
        .iter()
        .find(|name| !targets.iter().any(|t| t.name == name.as_str()))
    {
        let names: Vec<_> = targets.iter().map(|t| t.name).collect();
        eprintln!("fuzz: no target {unknown:?}; targets: {}", names.join(", "));
        return 2;
    }
    start_watchdog(options.timeout);
    println!(
        "fuzz: seed {} ({}; `--seed {}` repeats this run)",
        options.seed,
        match options.duration {
            Some(d) => format!("{} s per target", d.as_secs()),
            None => format!("{} mutated inputs per target", options.iterations),
        },
        options.seed
    );
    let (mut passed, mut failed) = (0, 0);
    for target in targets {
        if !options.only.is_empty() && !options.only.iter().any(|n| n == target.name) {
            continue;
        }
        match run_target(target, &options) {
            Ok(()) => passed += 1,
            Err(failure) => {
                println!("fuzz {}: FAILED: {failure}", target.name);
                failed += 1;
            }
        }
    }
    println!("{passed} passed, {failed} failed");
    i32::from(failed > 0)
}

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fuzz/corpus")
        .join(target)
}

fn crash_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("fuzz-crashes")
        .join(target)
}

fn read_corpus(target: &str) -> Result<Vec<Vec<u8>>, String> {
    let dir = corpus_dir(target);
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map_err(|e| format!("cannot read the corpus {}: {e}", dir.display()))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.is_file())
        .collect();
    paths.sort();
    if paths.is_empty() {
        return Err(format!("the corpus {} has no seeds", dir.display()));
    }
    paths
        .iter()
        .map(|path| std::fs::read(path).map_err(|e| format!("{}: {e}", path.display())))
        .collect()
}

fn run_target(target: &Target, options: &Options) -> Result<(), String> {
    let seeds = read_corpus(target.name)?;
    let started = Instant::now();
    let mut run = (target.setup)();
    let max_len = seeds.iter().map(Vec::len).max().unwrap_or(0) + GROWTH;
    let mut rng = Rng::new(options.seed ^ fnv(target.name.as_bytes()));
    let mut slowest = Duration::ZERO;
    let mut most_memory = 0usize;
    let mut count = 0u64;
    let mutated = |rng: &mut Rng| {
        let mut input = rng.pick(&seeds).clone();
        for _ in 0..=rng.below(4) {
            mutate(&mut input, &seeds, target.dictionary, max_len, rng);
        }
        input
    };
    let next = |count: u64, rng: &mut Rng| -> Option<Vec<u8>> {
        if let Some(seed) = seeds.get(count as usize) {
            return Some(seed.clone());
        }
        let done = match options.duration {
            Some(duration) => started.elapsed() >= duration,
            None => count >= seeds.len() as u64 + options.iterations,
        };
        (!done).then(|| mutated(rng))
    };
    while let Some(input) = next(count, &mut rng) {
        count += 1;
        let outcome = run_one(target.name, &mut run, &input);
        slowest = slowest.max(outcome.took);
        most_memory = most_memory.max(outcome.memory);
        if let Some(problem) = outcome.problem {
            let saved = save(target.name, &input);
            return Err(format!(
                "input {count} {problem}; saved to {} (copy it into {} to make it a seed that \
                 runs first every time)",
                saved.display(),
                corpus_dir(target.name).display()
            ));
        }
    }
    println!(
        "fuzz {}: ok, {count} inputs ({} seeds) in {:.1} s; slowest {} ms, most new heap {} KiB",
        target.name,
        seeds.len(),
        started.elapsed().as_secs_f64(),
        slowest.as_millis(),
        most_memory / 1024
    );
    Ok(())
}

struct Outcome {
    took: Duration,
    memory: usize,
    problem: Option<String>,
}

fn run_one(target: &'static str, run: &mut Run, input: &[u8]) -> Outcome {
    {
        let mut current = CURRENT.lock().unwrap();
        current.target = target;
        current.input.clear();
        current.input.extend_from_slice(input);
        current.started = Some(Instant::now());
    }
    let baseline = LIVE.load(Relaxed);
    PEAK.store(baseline, Relaxed);
    REFUSED.store(0, Relaxed);
    CEILING.store(baseline.saturating_add(MEMORY_BOUND), Relaxed);
    let started = Instant::now();
    let result = catch_unwind(AssertUnwindSafe(|| run(input)));
    let took = started.elapsed();
    CEILING.store(usize::MAX, Relaxed);
    CURRENT.lock().unwrap().started = None;
    let memory = PEAK.load(Relaxed).saturating_sub(baseline);
    let refused = REFUSED.load(Relaxed);
    let problem = if let Err(panic) = result {
        let message = panic
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| panic.downcast_ref::<&str>().copied())
            .unwrap_or("(no message)");
        Some(format!("panicked: {message}"))
    } else if refused > 0 {
        Some(format!(
            "asked for {refused} bytes, past the {} MiB memory bound",
            MEMORY_BOUND >> 20
        ))
    } else {
        None
    };
    Outcome {
        took,
        memory,
        problem,
    }
}

/// Writes `input` under the crash folder, named by its hash, and returns the path.
fn save(target: &str, input: &[u8]) -> PathBuf {
    let dir = crash_dir(target);
    let path = dir.join(format!("crash-{:016x}", fnv(input)));
    if let Err(e) = std::fs::create_dir_all(&dir).and_then(|()| std::fs::write(&path, input)) {
        eprintln!("fuzz: cannot save the input to {}: {e}", path.display());
    }
    path
}

/// The input being run, for the watchdog and the allocator to save when it breaks a bound.
struct Current {
    target: &'static str,
    input: Vec<u8>,
    started: Option<Instant>,
}

static CURRENT: Mutex<Current> = Mutex::new(Current {
    target: "",
    input: Vec::new(),
    started: None,
});

/// Saves the running input and says why, before the process is ended for it.
fn report_current(why: &str) {
    let current = CURRENT.lock().unwrap();
    let path = save(current.target, &current.input);
    let _ = writeln!(
        std::io::stderr(),
        "fuzz {}: {why}; the input is saved to {}",
        current.target,
        path.display()
    );
}

/// A thread that ends the process when one input runs past `timeout` (a hang cannot be
/// interrupted from inside; the saved input reproduces it).
fn start_watchdog(timeout: Duration) {
    std::thread::spawn(move || {
        loop {
            std::thread::sleep(Duration::from_millis(100));
            let stuck = CURRENT
                .lock()
                .unwrap()
                .started
                .is_some_and(|t| t.elapsed() > timeout);
            if stuck {
                CEILING.store(usize::MAX, Relaxed);
                report_current(&format!("an input ran past {} s", timeout.as_secs()));
                std::process::abort();
            }
        }
    });
}

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);
static CEILING: AtomicUsize = AtomicUsize::new(usize::MAX);
/// Size of an allocation refused during the current input (0: none).
static REFUSED: AtomicUsize = AtomicUsize::new(0);

/// The fuzz binary's global allocator: the system's, counting live bytes so that an input's
/// memory can be measured and bounded. An allocation past the bound is refused (Rust then
/// aborts with "memory allocation of N bytes failed") after the input is saved.
pub struct CountingAlloc;

fn reserve(size: usize) -> bool {
    let live = LIVE.fetch_add(size, Relaxed) + size;
    if live > CEILING.load(Relaxed) {
        LIVE.fetch_sub(size, Relaxed);
        // Disarmed first: saving the input allocates.
        CEILING.store(usize::MAX, Relaxed);
        REFUSED.store(size, Relaxed);
        report_current(&format!(
            "an input asked for {size} bytes, past the {} MiB memory bound",
            MEMORY_BOUND >> 20
        ));
        return false;
    }
    PEAK.fetch_max(live, Relaxed);
    true
}

fn release(size: usize) {
    LIVE.fetch_sub(size, Relaxed);
}

// SAFETY: every call is forwarded to `System` unchanged; only counters are kept beside it.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if !reserve(layout.size()) {
            return std::ptr::null_mut();
        }
        let ptr = unsafe { System.alloc(layout) };
        if ptr.is_null() {
            release(layout.size());
        }
        ptr
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if !reserve(layout.size()) {
            return std::ptr::null_mut();
        }
        let ptr = unsafe { System.alloc_zeroed(layout) };
        if ptr.is_null() {
            release(layout.size());
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        release(layout.size());
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let old = layout.size();
        if new_size > old && !reserve(new_size - old) {
            return std::ptr::null_mut();
        }
        let moved = unsafe { System.realloc(ptr, layout, new_size) };
        if moved.is_null() {
            if new_size > old {
                release(new_size - old);
            }
        } else if new_size < old {
            release(old - new_size);
        }
        moved
    }
}

/// splitmix64: small, seedable, good enough to pick mutations.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n` > 0).
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3)
    })
}

/// Byte values that sit on format boundaries.
const INTERESTING_BYTES: &[u8] = &[
    0, 1, 0x7f, 0x80, 0xff, b'0', b'9', b'"', b'\'', b'{', b'}', b'[', b']', b',', b':', b'-',
    b'\n', b'\r', b'\\', b'<', b'#', b'=', b' ',
];
/// Integers that overflow, wrap or divide by zero, written in binary formats as 2, 4 or 8 bytes.
const INTERESTING_INTS: &[u64] = &[
    0,
    1,
    2,
    0x7f,
    0xff,
    0x7fff,
    0xffff,
    0x7fff_ffff,
    0x8000_0000,
    0xffff_ffff,
    0x1_0000_0000,
    i64::MAX as u64,
    u64::MAX,
];
/// The same in text formats (JSON, TOML, headers).
const INTERESTING_NUMBERS: &[&str] = &[
    "0",
    "-1",
    "1",
    "-0",
    "0.5",
    "65536",
    "4294967295",
    "4294967296",
    "9223372036854775807",
    "18446744073709551615",
    "18446744073709551616",
    "1e308",
    "1e-308",
    "99999999999999999999999",
];

fn mutate(
    input: &mut Vec<u8>,
    seeds: &[Vec<u8>],
    dictionary: &[&[u8]],
    max_len: usize,
    rng: &mut Rng,
) {
    let len = input.len();
    match rng.below(11) {
        0 if len > 0 => {
            let at = rng.below(len);
            input[at] ^= 1 << rng.below(8);
        }
        1 if len > 0 => {
            let at = rng.below(len);
            input[at] = *rng.pick(INTERESTING_BYTES);
        }
        2 if len > 0 => {
            let width = [2, 4, 8][rng.below(3)];
            let value = *rng.pick(INTERESTING_INTS);
            let bytes = if rng.below(2) == 0 {
                value.to_le_bytes()
            } else {
                value.to_be_bytes()
            };
            let bytes = if rng.below(2) == 0 {
                &bytes[..width]
            } else {
                &bytes[8 - width..]
            };
            let at = rng.below(len);
            let end = (at + width).min(len);
            input[at..end].copy_from_slice(&bytes[..end - at]);
        }
        3 if len > 0 => {
            let at = rng.below(len);
            let count = 1 + rng.below((len - at).min(64));
            input.drain(at..at + count);
        }
        4 if len > 0 => {
            let from = rng.below(len);
            let count = 1 + rng.below((len - from).min(256));
            let copy = input[from..from + count].to_vec();
            let at = rng.below(len + 1);
            input.splice(at..at, copy);
        }
        5 => {
            let at = rng.below(len + 1);
            let bytes: Vec<u8> = (0..1 + rng.below(16)).map(|_| rng.next() as u8).collect();
            input.splice(at..at, bytes);
        }
        6 if !dictionary.is_empty() => {
            let at = rng.below(len + 1);
            let token = rng.pick(dictionary);
            if rng.below(2) == 0 {
                input.splice(at..at, token.iter().copied());
            } else {
                let end = (at + token.len()).min(len);
                input.splice(at..end, token.iter().copied());
            }
        }
        7 if len > 0 => input.truncate(rng.below(len)),
        8 => {
            let other = rng.pick(seeds);
            let cut = rng.below(len + 1);
            let from = rng.below(other.len() + 1);
            input.truncate(cut);
            input.extend_from_slice(&other[from..]);
        }
        9 => replace_number(input, rng),
        _ => {
            let at = rng.below(len + 1);
            let count = 1 + rng.below(8);
            let byte = rng.next() as u8;
            input.splice(at..at, std::iter::repeat_n(byte, count));
        }
    }
    input.truncate(max_len);
}

/// Replaces a run of ASCII digits (a number in a text format) with an interesting number.
fn replace_number(input: &mut Vec<u8>, rng: &mut Rng) {
    let starts: Vec<usize> = (0..input.len())
        .filter(|&i| input[i].is_ascii_digit() && (i == 0 || !input[i - 1].is_ascii_digit()))
        .collect();
    if starts.is_empty() {
        return;
    }
    let start = *rng.pick(&starts);
    let end = input[start..]
        .iter()
        .position(|b| !b.is_ascii_digit())
        .map_or(input.len(), |n| start + n);
    input.splice(start..end, rng.pick(INTERESTING_NUMBERS).bytes());
}
