//! Parser for Markdown screenplays: a `# Title`, scene headings (`INT.`/`EXT.`, optionally
//! as `##` headings), action paragraphs, CHARACTER cues with parentheticals and dialogue,
//! camera directions (`CLOSE ON`, `WIDE SHOT:`) and transitions (`DISSOLVE TO:`).
//! It only recognises structure; turning it into shots is the planner's job.

/// One block of the screenplay, in reading order.
#[derive(Debug, Clone, PartialEq)]
pub enum Block {
    Title(String),
    Scene(SceneHeading),
    Action(String),
    /// A camera direction for the next shot, with the rest of its line (if any) as action.
    Direction {
        size: Option<Size>,
        movement: Option<Move>,
        angle: String,
        action: String,
    },
    Dialogue {
        speaker: String,
        parenthetical: String,
        text: String,
    },
    Transition(TransitionCue),
}

#[derive(Debug, Clone, PartialEq)]
pub struct SceneHeading {
    pub heading: String,
    pub interior: bool,
    pub location: String,
    pub time_of_day: String,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum TransitionCue {
    Cut,
    Dissolve,
    FadeToBlack,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Size {
    ExtremeWide,
    Wide,
    Medium,
    MediumCloseUp,
    CloseUp,
    ExtremeCloseUp,
    Insert,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Move {
    PanLeft,
    PanRight,
    TiltUp,
    TiltDown,
    DollyIn,
    DollyOut,
    Tracking,
    Handheld,
    CraneUp,
    Orbit,
}

/// Camera direction keywords, longest first so `EXTREME CLOSE-UP` wins over `CLOSE-UP`.
const SIZES: &[(&str, Size)] = &[
    ("EXTREME WIDE SHOT", Size::ExtremeWide),
    ("EXTREME WIDE", Size::ExtremeWide),
    ("EXTREME CLOSE-UP", Size::ExtremeCloseUp),
    ("EXTREME CLOSE UP", Size::ExtremeCloseUp),
    ("MEDIUM CLOSE-UP", Size::MediumCloseUp),
    ("MEDIUM CLOSE UP", Size::MediumCloseUp),
    ("ESTABLISHING SHOT", Size::ExtremeWide),
    ("WIDE SHOT", Size::Wide),
    ("WIDE ON", Size::Wide),
    ("MEDIUM SHOT", Size::Medium),
    ("CLOSE-UP", Size::CloseUp),
    ("CLOSE UP", Size::CloseUp),
    ("CLOSE ON", Size::CloseUp),
    ("INSERT", Size::Insert),
    ("ANGLE ON", Size::Medium),
];

const MOVES: &[(&str, Move)] = &[
    ("PAN LEFT", Move::PanLeft),
    ("PAN RIGHT", Move::PanRight),
    ("TILT UP", Move::TiltUp),
    ("TILT DOWN", Move::TiltDown),
    ("DOLLY IN", Move::DollyIn),
    ("PUSH IN", Move::DollyIn),
    ("DOLLY OUT", Move::DollyOut),
    ("PULL BACK", Move::DollyOut),
    ("TRACKING SHOT", Move::Tracking),
    ("TRACKING", Move::Tracking),
    ("HANDHELD", Move::Handheld),
    ("CRANE UP", Move::CraneUp),
    ("ORBIT", Move::Orbit),
];

/// Splits a screenplay into blocks. Never fails: unrecognised text is action.
pub fn parse(script: &str) -> Vec<Block> {
    let mut blocks = Vec::new();
    for paragraph in paragraphs(script) {
        let first = paragraph[0];
        if let Some(title) = first.strip_prefix("# ") {
            blocks.push(Block::Title(title.trim().to_string()));
            if paragraph.len() > 1 {
                blocks.push(Block::Action(join(&paragraph[1..])));
            }
        } else if let Some(scene) = scene_heading(first) {
            blocks.push(Block::Scene(scene));
            if paragraph.len() > 1 {
                blocks.push(Block::Action(join(&paragraph[1..])));
            }
        } else if let Some(cue) = transition(first) {
            blocks.push(Block::Transition(cue));
        } else if let Some(direction) = direction(&join(&paragraph)) {
            blocks.push(direction);
        } else if paragraph.len() > 1 && is_character_cue(first) {
            blocks.extend(dialogue(first, &paragraph[1..]));
        } else {
            blocks.push(Block::Action(join(&paragraph)));
        }
    }
    blocks
}

/// Non-empty paragraphs with Markdown decoration (`##`, `**`, `>`) removed from each line.
fn paragraphs(script: &str) -> Vec<Vec<&str>> {
    let mut out = Vec::new();
    let mut current = Vec::new();
    for line in script.lines() {
        let line = line.trim().trim_start_matches('>').trim();
        let line = line.trim_matches('*').trim_matches('_').trim();
        if line.is_empty() {
            if !current.is_empty() {
                out.push(std::mem::take(&mut current));
            }
        } else if line.starts_with("<!--") || line == "---" {
            continue;
        } else {
            current.push(line);
        }
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

fn join(lines: &[&str]) -> String {
    lines.join(" ")
}

fn scene_heading(line: &str) -> Option<SceneHeading> {
    let line = line.trim_start_matches('#').trim();
    let upper = line.to_uppercase();
    let (interior, rest) = [
        "INT./EXT.",
        "INT/EXT",
        "I/E.",
        "I/E",
        "INT.",
        "INT ",
        "EXT.",
        "EXT ",
    ]
    .iter()
    .find(|prefix| upper.starts_with(**prefix))
    .map(|prefix| (!prefix.starts_with("EXT"), line[prefix.len()..].trim()))?;
    let (location, time_of_day) = match rest.rsplit_once(" - ").or_else(|| rest.rsplit_once(" — "))
    {
        Some((location, time)) => (location.trim(), time.trim()),
        None => (rest, ""),
    };
    Some(SceneHeading {
        heading: line.to_string(),
        interior,
        location: location.to_string(),
        time_of_day: time_of_day.to_uppercase(),
    })
}

fn transition(line: &str) -> Option<TransitionCue> {
    let upper = line.trim_start_matches('#').trim().to_uppercase();
    let upper = upper.trim_end_matches(['.', ':']);
    match upper {
        "CUT TO" | "SMASH CUT TO" | "HARD CUT" | "CUT" => Some(TransitionCue::Cut),
        "DISSOLVE TO" | "DISSOLVE" | "CROSSFADE" | "CROSSFADE TO" | "MATCH DISSOLVE TO" => {
            Some(TransitionCue::Dissolve)
        }
        "FADE TO BLACK" | "FADE OUT" | "FADE IN" | "FADE THROUGH BLACK" => {
            Some(TransitionCue::FadeToBlack)
        }
        _ => None,
    }
}

/// `CLOSE ON the bird's eye.` or `WIDE SHOT, PUSH IN: the harbour at dawn.`
fn direction(text: &str) -> Option<Block> {
    let upper = text.to_uppercase();
    let mut size = None;
    let mut movement = None;
    let mut consumed = 0;
    loop {
        let rest = upper[consumed..].trim_start_matches([' ', ',', '-', '—']);
        let skipped = upper.len() - consumed - rest.len();
        let found = SIZES
            .iter()
            .filter(|_| size.is_none())
            .find(|(word, _)| rest.starts_with(word))
            .map(|(word, s)| {
                size = Some(*s);
                word.len()
            })
            .or_else(|| {
                MOVES
                    .iter()
                    .filter(|_| movement.is_none())
                    .find(|(word, _)| rest.starts_with(word))
                    .map(|(word, m)| {
                        movement = Some(*m);
                        word.len()
                    })
            });
        match found {
            Some(len) => consumed += skipped + len,
            None => break,
        }
    }
    if size.is_none() && movement.is_none() {
        return None;
    }
    // The keyword must stand alone (`CLOSE ON` yes, `CLOSED` no).
    let after = &text[consumed..];
    if after.chars().next().is_some_and(|c| c.is_alphanumeric()) {
        return None;
    }
    let after = after
        .trim_start_matches([' ', ':', ',', '-', '—', '.'])
        .trim();
    let (angle, action) = split_angle(after);
    Some(Block::Direction {
        size,
        movement,
        angle,
        action: action.to_string(),
    })
}

/// A leading `(low angle)` in a direction is the angle.
fn split_angle(text: &str) -> (String, &str) {
    if let Some(inner) = text.strip_prefix('(')
        && let Some((angle, rest)) = inner.split_once(')')
    {
        return (angle.trim().to_string(), rest.trim());
    }
    (String::new(), text)
}

/// `MARA`, `OLD TOMAS (V.O.)`, `MARA (CONT'D)`: upper case, short, no sentence punctuation.
fn is_character_cue(line: &str) -> bool {
    let name = strip_extension(line);
    !name.is_empty()
        && name.len() <= 40
        && name.chars().any(|c| c.is_alphabetic())
        && name
            .chars()
            .all(|c| c.is_uppercase() || c.is_ascii_digit() || " .'-".contains(c))
        && !name.ends_with('.')
}

fn strip_extension(line: &str) -> &str {
    match line.find('(') {
        Some(i) => line[..i].trim(),
        None => line.trim(),
    }
}

/// A cue and its lines: parentheticals apply to the dialogue after them.
fn dialogue(cue: &str, lines: &[&str]) -> Vec<Block> {
    let speaker = strip_extension(cue).to_string();
    let mut blocks = Vec::new();
    let mut parenthetical = String::new();
    let mut text = String::new();
    for line in lines {
        if let Some(inner) = line.strip_prefix('(').and_then(|l| l.strip_suffix(')')) {
            if !text.is_empty() {
                blocks.push(Block::Dialogue {
                    speaker: speaker.clone(),
                    parenthetical: std::mem::take(&mut parenthetical),
                    text: std::mem::take(&mut text),
                });
            }
            parenthetical = inner.trim().to_string();
        } else {
            if !text.is_empty() {
                text.push(' ');
            }
            text.push_str(line);
        }
    }
    if !text.is_empty() {
        blocks.push(Block::Dialogue {
            speaker,
            parenthetical,
            text,
        });
    }
    blocks
}
