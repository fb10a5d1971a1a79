//! A deliberately misbehaving planner for the host's tests. The first word of the script
//! picks the misbehaviour; each one must end the call with a clear error while the host
//! keeps serving, or (`markup`) return hostile text the web UI must show as text. Never
//! install this outside tests.

use std::hint::black_box;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use videosdgx_plugin_sdk::types::{
    Camera, CameraMove, Character, DialogueLine, PlanInput, PluginError, Scene, Shot, ShotSize,
    Soundtrack, Storyboard, Style, Timeline, TimelineClip, TimelineItem, TitleCard, Transition,
    TransitionKind,
};
use videosdgx_plugin_sdk::{Planner, host};

struct Hostile;

impl Planner for Hostile {
    fn plan(input: PlanInput) -> Result<Storyboard, PluginError> {
        match input.script.split_whitespace().next().unwrap_or("") {
            "loop" => spin(),
            "allocate" => allocate(),
            "recurse" => Err(PluginError::Failed(format!(
                "depth {}",
                recurse(black_box(1))
            ))),
            "trap" => core::arch::wasm32::unreachable(),
            "huge-string" => Ok(storyboard(huge_string())),
            "ungranted" => ungranted(),
            "upscale-ungranted" => upscale_ungranted(),
            "files" => files(),
            "sockets" => sockets(),
            "invalid-ids" => invalid_ids(),
            "bad-volumes" => {
                let mut words = input.script.split_whitespace().skip(1);
                let clip = words.next().unwrap_or("");
                bad_volumes(clip, words.next().unwrap_or("music"))
            }
            "slow-host" => slow_host(),
            "echo" => Ok(storyboard(input.script)),
            "remember" => Ok(storyboard(remember())),
            "markup" => Ok(markup()),
            other => Err(PluginError::InvalidInput(format!(
                "unknown misbehaviour `{other}`"
            ))),
        }
    }
}

videosdgx_plugin_sdk::export_planner!(Hostile);

fn storyboard(title: String) -> Storyboard {
    Storyboard {
        title,
        style: Style {
            look: String::new(),
            lighting: String::new(),
            negative: String::new(),
        },
        characters: Vec::new(),
        scenes: Vec::new(),
        shots: Vec::new(),
        opening_title: None,
        closing_title: None,
    }
}

/// Markup and script where a page shows plugin text: an `onerror` that sets
/// `window.__pwned`, a `javascript:` link, a right-to-left override and a 2000-character word.
/// The browser test checks that every one of them is shown as text and stays in its box.
fn markup() -> Storyboard {
    let img = |field: &str| format!("<img src=x onerror=\"window.__pwned='{field}'\">");
    let link = "<a href=\"javascript:window.__pwned='link'\">click</a>";
    let long = "W".repeat(2000);
    let rtl = "\u{202e}gnp.exe";
    let shot = |id: &str, action: String, line: String| Shot {
        id: id.into(),
        scene_index: 0,
        action,
        character_ids: vec!["x".into()],
        dialogue: vec![DialogueLine {
            character_id: "x".into(),
            parenthetical: img("parenthetical"),
            text: line,
        }],
        camera: Camera {
            size: ShotSize::Medium,
            movement: CameraMove::Fixed,
            angle: img("angle"),
        },
        frames: 17,
        duration_ms: 1062,
        transition_in: Transition {
            kind: TransitionKind::Cut,
            duration_ms: 0,
        },
    };
    Storyboard {
        title: format!("{} {link} {rtl}", img("title")),
        style: Style {
            look: img("look"),
            lighting: link.into(),
            negative: long.clone(),
        },
        characters: vec![Character {
            id: "x".into(),
            name: format!("{}{rtl}", img("character")),
            description: link.into(),
        }],
        scenes: vec![Scene {
            index: 0,
            heading: img("scene"),
            interior: true,
            location: long.clone(),
            time_of_day: rtl.into(),
        }],
        shots: vec![
            shot(
                "s01-01",
                format!("{} {link}", img("action")),
                img("dialogue"),
            ),
            shot("s01-02", long.clone(), format!("{link} {rtl}")),
        ],
        opening_title: Some(TitleCard {
            text: img("opening"),
            duration_ms: 1000,
        }),
        closing_title: None,
    }
}

static CALLS: AtomicU32 = AtomicU32::new(0);
static SCRIBBLE: Mutex<Vec<u8>> = Mutex::new(Vec::new());

/// Counts calls in a global and leaves 4 MiB of heap dirty: a call that started from what an
/// earlier one left would see a count above 1 or the scribble.
fn remember() -> String {
    let calls = CALLS.fetch_add(1, Ordering::SeqCst) + 1;
    let mut scribble = SCRIBBLE.lock().unwrap_or_else(|p| p.into_inner());
    let seen = scribble.len();
    scribble.resize(4 << 20, 0xAB);
    format!("call {calls}, found {seen} bytes")
}

fn spin() -> ! {
    let mut x = 0u64;
    loop {
        x = black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
    }
}

fn allocate() -> ! {
    let mut hoard: Vec<Vec<u8>> = Vec::new();
    loop {
        hoard.push(vec![1u8; 16 << 20]);
        black_box(&hoard);
    }
}

fn recurse(depth: u64) -> u64 {
    if depth == u64::MAX {
        return 0;
    }
    // Locals only: the native stack overflows, not the guest's in-memory shadow stack.
    recurse(black_box(depth + 1)).wrapping_add(depth)
}

/// A string header claiming 3 GiB: the host must refuse to lift it, never allocate it.
fn huge_string() -> String {
    let small = String::with_capacity(16);
    let ptr = small.as_ptr() as *mut u8;
    std::mem::forget(small);
    // SAFETY: never read by this guest; it only crosses the boundary as (ptr, len), which is
    // what the host's bounds check is tested against.
    unsafe { String::from_raw_parts(ptr, 3 << 30, 3 << 30) }
}

fn ungranted() -> Result<Storyboard, PluginError> {
    let request = videosdgx_plugin_sdk::types::GenerationRequest {
        prompt: "anything".into(),
        negative_prompt: String::new(),
        width: 64,
        height: 64,
        frames: 5,
        steps: None,
        guidance: None,
        seed: 0,
    };
    host::generation::text_to_video(&request)?;
    Err(PluginError::Failed(
        "generation ran without the `generate` grant".into(),
    ))
}

/// Asks the host to upscale a video (GPU work, behind `media`) when run without that grant.
fn upscale_ungranted() -> Result<Storyboard, PluginError> {
    host::media::upscale("1", 3840, 2160)?;
    Err(PluginError::Failed(
        "media.upscale ran without the `media` grant".into(),
    ))
}

fn files() -> Result<Storyboard, PluginError> {
    for path in ["/etc/passwd", ".", "/"] {
        if let Ok(text) = std::fs::read_to_string(path) {
            return Ok(storyboard(text));
        }
        if let Ok(entries) = std::fs::read_dir(path) {
            return Ok(storyboard(format!(
                "listed {} entries of {path}",
                entries.count()
            )));
        }
    }
    std::fs::write("escape.txt", b"x")
        .map_err(|e| PluginError::Failed(format!("filesystem refused: {e}")))?;
    Ok(storyboard("wrote escape.txt".into()))
}

fn sockets() -> Result<Storyboard, PluginError> {
    match std::net::TcpStream::connect("127.0.0.1:7860") {
        Ok(_) => Ok(storyboard("connected to 127.0.0.1:7860".into())),
        Err(e) => Err(PluginError::Failed(format!("network refused: {e}"))),
    }
}

/// Every host API asked about things that do not exist; all answers must be errors.
fn invalid_ids() -> Result<Storyboard, PluginError> {
    let mut answers = Vec::new();
    answers.push(format!("{:?}", host::assets::info("no-such-asset").err()));
    answers.push(format!(
        "{:?}",
        host::assets::read("../../etc/passwd", 0, 64).err()
    ));
    answers.push(format!("{:?}", host::media::probe("\0bad").err()));
    answers.push(format!(
        "{:?}",
        host::project::read_document("../secrets").err()
    ));
    if answers.iter().any(|a| a == "None") {
        return Ok(storyboard(format!(
            "a host API accepted an invalid id: {answers:?}"
        )));
    }
    Err(PluginError::NotFound(answers.join("; ")))
}

/// Renders `asset` at gains the host must refuse (each error names the clip, or the soundtrack
/// `music`), then at the extremes it must accept (0 alone, 4 with `music` at 4).
fn bad_volumes(asset: &str, music: &str) -> Result<Storyboard, PluginError> {
    let render = |volume: f32, music_volume: Option<f32>| {
        let clip = TimelineClip {
            asset_id: asset.into(),
            shot_id: format!("shot-at-{volume}"),
            trim_start_ms: 0,
            duration_ms: 500,
            transition_in: Transition {
                kind: TransitionKind::Cut,
                duration_ms: 0,
            },
            volume,
        };
        let timeline = Timeline {
            width: 64,
            height: 48,
            fps: 8,
            items: vec![TimelineItem::Clip(clip)],
            soundtrack: music_volume.map(|volume| Soundtrack {
                asset_id: music.into(),
                volume,
            }),
        };
        host::media::render_timeline(&timeline, "loud.mp4")
    };
    let mut answers = Vec::new();
    let refused = [
        (f32::NAN, None),
        (f32::INFINITY, None),
        (-0.5, None),
        (4.5, None),
        (1.0, Some(-1.0)),
    ];
    for (volume, music_volume) in refused {
        match render(volume, music_volume) {
            Ok(_) => return Ok(storyboard(format!("the host rendered at volume {volume}"))),
            Err(e) => answers.push(format!("{e:?}")),
        }
    }
    render(0.0, None)?;
    render(4.0, Some(4.0))?;
    Err(PluginError::InvalidInput(answers.join("; ")))
}

/// Spends long in host calls (text generation) and little in its own code: host time must
/// not count against the plugin's wall-clock budget.
fn slow_host() -> Result<Storyboard, PluginError> {
    let mut last = String::new();
    for _ in 0..black_box(4) {
        last = host::text::complete("sleep", 1)?;
    }
    Ok(storyboard(last))
}
