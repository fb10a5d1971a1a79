//! storyboard-planner: a Markdown screenplay to a storyboard. Every action paragraph and every
//! exchange of dialogue becomes a shot; shots get a camera (from the script's directions or
//! from what happens in them), a length that fits the model's frame rule, and the characters
//! seen in them, whose descriptions come from the project's character bible or from their
//! introduction in the script (`MARA (30s, oil-stained apron)`). With the `text-generation`
//! capability a brief (a script with no scene heading) is first written into a screenplay by
//! the language model, and each shot's action is refined into a visual sentence; without it a
//! brief is refused and the plan is fully deterministic.

mod screenplay;

use screenplay::{Block, Move, SceneHeading, Size, TransitionCue};
use videosdgx_plugin_sdk::types::{
    Camera, CameraMove, Character, DialogueLine, PlanInput, PluginError, ProjectSettings, Scene,
    Shot, ShotSize, Storyboard, TitleCard, Transition, TransitionKind,
};
use videosdgx_plugin_sdk::{Planner, frames, host};

/// Reading speed used to time dialogue, words per second.
const WORDS_PER_SECOND: f32 = 2.5;
const OPENING_TITLE_MS: u32 = 2500;
const DEFAULT_DISSOLVE_MS: u32 = 600;
const DEFAULT_FADE_MS: u32 = 1000;

struct StoryboardPlanner;

impl Planner for StoryboardPlanner {
    fn plan(input: PlanInput) -> Result<Storyboard, PluginError> {
        check_model(&input.settings)?;
        let mut blocks = screenplay::parse(&input.script);
        if is_brief(&blocks) {
            blocks = screenplay_from_brief(&input.script)?;
        }
        let mut board = Builder::new(&input.settings).build(blocks)?;
        refine_with_text_model(&mut board);
        host::info(&format!(
            "planned {} scenes, {} shots, {} characters",
            board.scenes.len(),
            board.shots.len(),
            board.characters.len()
        ));
        Ok(board)
    }
}

videosdgx_plugin_sdk::export_planner!(StoryboardPlanner);

fn check_model(settings: &ProjectSettings) -> Result<(), PluginError> {
    let model = &settings.model;
    if model.fps == 0 || model.max_frames == 0 || model.width == 0 || model.height == 0 {
        return Err(PluginError::InvalidInput(format!(
            "model profile `{}` needs non-zero fps, max-frames, width and height",
            model.family
        )));
    }
    Ok(())
}

/// A shot before timing: what the script said about it.
struct Draft {
    scene_index: u32,
    action: String,
    dialogue: Vec<DialogueLine>,
    camera: Option<Camera>,
    transition: Option<TransitionCue>,
    first_in_scene: bool,
}

struct Builder<'a> {
    settings: &'a ProjectSettings,
    title: String,
    characters: Vec<Character>,
    scenes: Vec<Scene>,
    drafts: Vec<Draft>,
    pending_camera: Option<Camera>,
    pending_transition: Option<TransitionCue>,
    scene_has_shots: bool,
}

impl<'a> Builder<'a> {
    fn new(settings: &'a ProjectSettings) -> Self {
        Builder {
            settings,
            title: settings.title.clone(),
            characters: settings.characters.clone(),
            scenes: Vec::new(),
            drafts: Vec::new(),
            pending_camera: None,
            pending_transition: None,
            scene_has_shots: false,
        }
    }

    fn build(mut self, blocks: Vec<Block>) -> Result<Storyboard, PluginError> {
        for block in blocks {
            match block {
                Block::Title(title) if self.title.is_empty() => self.title = title,
                Block::Title(_) => {}
                Block::Scene(heading) => self.start_scene(heading),
                Block::Transition(cue) => self.pending_transition = Some(cue),
                Block::Direction {
                    size,
                    movement,
                    angle,
                    action,
                } => {
                    let camera = Camera {
                        size: size.map_or(ShotSize::Medium, shot_size),
                        movement: movement.map_or(CameraMove::Fixed, camera_move),
                        angle,
                    };
                    self.pending_camera = Some(camera);
                    if !action.is_empty() {
                        self.action(action);
                    }
                }
                Block::Action(text) => self.action(text),
                Block::Dialogue {
                    speaker,
                    parenthetical,
                    text,
                } => self.dialogue(speaker, parenthetical, text),
            }
        }
        if self.drafts.is_empty() {
            return Err(PluginError::InvalidInput(
                "the script has no action or dialogue to put on screen".into(),
            ));
        }
        let shots = self.time_shots();
        let opening_title =
            (self.settings.title_cards && !self.title.is_empty()).then(|| TitleCard {
                text: self.title.clone(),
                duration_ms: OPENING_TITLE_MS,
            });
        Ok(Storyboard {
            title: self.title,
            style: self.settings.style.clone(),
            characters: self.characters,
            scenes: self.scenes,
            shots,
            opening_title,
            closing_title: None,
        })
    }

    fn start_scene(&mut self, heading: SceneHeading) {
        self.scenes.push(Scene {
            index: self.scenes.len() as u32 + 1,
            heading: heading.heading,
            interior: heading.interior,
            location: heading.location,
            time_of_day: heading.time_of_day,
        });
        self.scene_has_shots = false;
    }

    fn current_scene(&mut self) -> u32 {
        if self.scenes.is_empty() {
            self.start_scene(SceneHeading {
                heading: String::new(),
                interior: false,
                location: String::new(),
                time_of_day: String::new(),
            });
        }
        self.scenes.len() as u32
    }

    fn action(&mut self, text: String) {
        self.learn_introductions(&text);
        self.push(text, Vec::new());
    }

    fn dialogue(&mut self, speaker: String, parenthetical: String, text: String) {
        let id = self.character_id(&speaker);
        let line = DialogueLine {
            character_id: id,
            parenthetical,
            text,
        };
        let scene = self.current_scene();
        // The first line after an action belongs to that shot; further exchanges get their
        // own coverage on the speaker.
        if self.pending_camera.is_none()
            && self.scene_has_shots
            && let Some(last) = self.drafts.last_mut()
            && last.scene_index == scene
            && last.dialogue.is_empty()
        {
            last.dialogue.push(line);
            return;
        }
        let name = self.name_of(&line.character_id);
        self.push(format!("{name} speaks"), vec![line]);
    }

    fn push(&mut self, action: String, dialogue: Vec<DialogueLine>) {
        let scene_index = self.current_scene();
        self.drafts.push(Draft {
            scene_index,
            action,
            dialogue,
            camera: self.pending_camera.take(),
            transition: self.pending_transition.take(),
            first_in_scene: !self.scene_has_shots,
        });
        self.scene_has_shots = true;
    }

    /// Screenplays introduce characters in capitals with a description: `MARA (30s, wiry)`.
    fn learn_introductions(&mut self, text: &str) {
        let mut rest = text;
        while let Some(open) = rest.find(" (") {
            let before = &rest[..open];
            let name: String = before
                .rsplit(|c: char| !(c.is_uppercase() || c == ' ' || c == '\'' || c == '-'))
                .next()
                .unwrap_or("")
                .trim()
                .to_string();
            let Some(close) = rest[open..].find(')') else {
                break;
            };
            let description = rest[open + 2..open + close].trim().to_string();
            if name.chars().filter(|c| c.is_alphabetic()).count() >= 2 {
                let id = self.character_id(&name);
                if let Some(character) = self.characters.iter_mut().find(|c| c.id == id)
                    && character.description.is_empty()
                {
                    character.description = description;
                }
            }
            rest = &rest[open + close..];
        }
    }

    /// The id of the character named `name`, adding an undescribed one when new.
    fn character_id(&mut self, name: &str) -> String {
        if let Some(known) = self.characters.iter().find(|c| same_name(c, name)) {
            return known.id.clone();
        }
        let id = slug(name);
        self.characters.push(Character {
            id: id.clone(),
            name: title_case(name),
            description: String::new(),
        });
        id
    }

    fn name_of(&self, id: &str) -> String {
        self.characters
            .iter()
            .find(|c| c.id == id)
            .map_or_else(|| id.to_string(), |c| c.name.clone())
    }

    /// Characters on screen: those who speak and those named in the action.
    fn characters_in(&self, draft: &Draft) -> Vec<String> {
        self.characters
            .iter()
            .filter(|c| {
                draft.dialogue.iter().any(|line| line.character_id == c.id)
                    || mentions(&draft.action, &c.name)
                    || mentions(&draft.action, &c.id)
            })
            .map(|c| c.id.clone())
            .collect()
    }

    fn time_shots(&self) -> Vec<Shot> {
        let model = &self.settings.model;
        let longest_ms = frames::duration_ms(frames::longest(model), model).max(1);
        let mut shots = Vec::new();
        let mut per_scene = vec![0u32; self.scenes.len() + 1];
        for (n, draft) in self.drafts.iter().enumerate() {
            let scene = self.scenes.get(draft.scene_index as usize - 1);
            let wanted_ms = wanted_duration_ms(draft);
            let parts = wanted_ms.div_ceil(longest_ms).max(1);
            let base_camera = draft
                .camera
                .clone()
                .unwrap_or_else(|| default_camera(draft, scene));
            let characters = self.characters_in(draft);
            for part in 0..parts {
                per_scene[draft.scene_index as usize] += 1;
                let frames = frames::frames_for(wanted_ms / parts, model);
                let mut camera = base_camera.clone();
                let transition = if part == 0 {
                    self.transition_for(draft, n == 0)
                } else {
                    // Continuations cut to tighter coverage so the split is not a jump cut.
                    camera.size = tighter(camera.size);
                    Transition {
                        kind: TransitionKind::Cut,
                        duration_ms: 0,
                    }
                };
                shots.push(Shot {
                    id: format!(
                        "s{:02}-{:02}",
                        draft.scene_index, per_scene[draft.scene_index as usize]
                    ),
                    scene_index: draft.scene_index,
                    action: draft.action.clone(),
                    character_ids: characters.clone(),
                    dialogue: share(&draft.dialogue, part, parts),
                    camera,
                    frames,
                    duration_ms: frames::duration_ms(frames, model),
                    transition_in: transition,
                });
            }
        }
        shots
    }

    fn transition_for(&self, draft: &Draft, very_first: bool) -> Transition {
        match draft.transition {
            Some(TransitionCue::Cut) => Transition {
                kind: TransitionKind::Cut,
                duration_ms: 0,
            },
            Some(TransitionCue::Dissolve) => Transition {
                kind: TransitionKind::Crossfade,
                duration_ms: nonzero(
                    self.settings.scene_transition.duration_ms,
                    DEFAULT_DISSOLVE_MS,
                ),
            },
            Some(TransitionCue::FadeToBlack) => Transition {
                kind: TransitionKind::FadeThroughBlack,
                duration_ms: nonzero(self.settings.scene_transition.duration_ms, DEFAULT_FADE_MS),
            },
            None if very_first && !self.settings.title_cards => Transition {
                kind: TransitionKind::Cut,
                duration_ms: 0,
            },
            None if draft.first_in_scene => self.settings.scene_transition,
            None => self.settings.shot_transition,
        }
    }
}

/// How long a shot wants to be: long enough to read its dialogue and see its action.
fn wanted_duration_ms(draft: &Draft) -> u32 {
    let action_words = draft.action.split_whitespace().count() as f32;
    let spoken_words: f32 = draft
        .dialogue
        .iter()
        .map(|l| l.text.split_whitespace().count() as f32)
        .sum();
    let action_s = 1.5 + 0.12 * action_words;
    let speech_s = if spoken_words > 0.0 {
        0.8 + spoken_words / WORDS_PER_SECOND
    } else {
        0.0
    };
    (action_s.max(speech_s).clamp(2.0, 30.0) * 1000.0) as u32
}

/// The lines of dialogue that fall in part `part` of `parts`.
fn share(lines: &[DialogueLine], part: u32, parts: u32) -> Vec<DialogueLine> {
    lines
        .iter()
        .enumerate()
        .filter(|(i, _)| (*i as u32 * parts / lines.len().max(1) as u32) == part)
        .map(|(_, l)| l.clone())
        .collect()
}

fn default_camera(draft: &Draft, scene: Option<&Scene>) -> Camera {
    let action = draft.action.to_lowercase();
    let has = |words: &[&str]| words.iter().any(|w| contains_word(&action, w));
    let (size, movement) = if draft.first_in_scene {
        match scene {
            Some(scene) if !scene.interior => (ShotSize::ExtremeWide, CameraMove::PanRight),
            _ => (ShotSize::Wide, CameraMove::DollyIn),
        }
    } else if !draft.dialogue.is_empty() {
        (ShotSize::MediumCloseUp, CameraMove::Fixed)
    } else if has(&[
        "hand", "hands", "eye", "eyes", "face", "fingers", "tear", "smile", "key", "ring",
    ]) {
        (ShotSize::CloseUp, CameraMove::Fixed)
    } else if has(&[
        "walks", "runs", "strides", "drives", "rides", "chases", "rushes", "crosses", "follows",
    ]) {
        (ShotSize::Medium, CameraMove::Tracking)
    } else if has(&["looks up", "rises", "soars", "flies", "towers"]) {
        (ShotSize::Wide, CameraMove::TiltUp)
    } else {
        (ShotSize::Medium, CameraMove::Fixed)
    };
    Camera {
        size,
        movement,
        angle: String::new(),
    }
}

fn tighter(size: ShotSize) -> ShotSize {
    match size {
        ShotSize::ExtremeWide => ShotSize::Wide,
        ShotSize::Wide => ShotSize::Medium,
        ShotSize::Medium => ShotSize::MediumCloseUp,
        ShotSize::MediumCloseUp => ShotSize::CloseUp,
        ShotSize::CloseUp | ShotSize::ExtremeCloseUp => ShotSize::ExtremeCloseUp,
        ShotSize::Insert => ShotSize::Insert,
    }
}

fn shot_size(size: Size) -> ShotSize {
    match size {
        Size::ExtremeWide => ShotSize::ExtremeWide,
        Size::Wide => ShotSize::Wide,
        Size::Medium => ShotSize::Medium,
        Size::MediumCloseUp => ShotSize::MediumCloseUp,
        Size::CloseUp => ShotSize::CloseUp,
        Size::ExtremeCloseUp => ShotSize::ExtremeCloseUp,
        Size::Insert => ShotSize::Insert,
    }
}

fn camera_move(movement: Move) -> CameraMove {
    match movement {
        Move::PanLeft => CameraMove::PanLeft,
        Move::PanRight => CameraMove::PanRight,
        Move::TiltUp => CameraMove::TiltUp,
        Move::TiltDown => CameraMove::TiltDown,
        Move::DollyIn => CameraMove::DollyIn,
        Move::DollyOut => CameraMove::DollyOut,
        Move::Tracking => CameraMove::Tracking,
        Move::Handheld => CameraMove::Handheld,
        Move::CraneUp => CameraMove::CraneUp,
        Move::Orbit => CameraMove::Orbit,
    }
}

fn nonzero(value: u32, default: u32) -> u32 {
    if value == 0 { default } else { value }
}

fn same_name(character: &Character, name: &str) -> bool {
    character.name.eq_ignore_ascii_case(name.trim()) || character.id == slug(name)
}

fn slug(name: &str) -> String {
    let mut slug = String::new();
    for c in name.trim().chars() {
        if c.is_alphanumeric() {
            slug.extend(c.to_lowercase());
        } else if !slug.ends_with('-') && !slug.is_empty() {
            slug.push('-');
        }
    }
    slug.trim_end_matches('-').to_string()
}

fn title_case(name: &str) -> String {
    name.split_whitespace()
        .map(|word| {
            let mut chars = word.chars();
            chars.next().map_or_else(String::new, |first| {
                first
                    .to_uppercase()
                    .chain(chars.flat_map(char::to_lowercase))
                    .collect()
            })
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Whether `text` names `name` as a whole word, ignoring case.
fn mentions(text: &str, name: &str) -> bool {
    !name.is_empty() && contains_word(&text.to_lowercase(), &name.to_lowercase())
}

fn contains_word(haystack: &str, word: &str) -> bool {
    haystack.match_indices(word).any(|(i, _)| {
        let before = haystack[..i].chars().next_back();
        let after = haystack[i + word.len()..].chars().next();
        !before.is_some_and(char::is_alphanumeric) && !after.is_some_and(char::is_alphanumeric)
    })
}

fn has_scene(blocks: &[Block]) -> bool {
    blocks.iter().any(|b| matches!(b, Block::Scene(_)))
}

/// A brief has words but no scene heading; a script with nothing but a title is no brief, only
/// empty, and is not worth asking the language model about.
fn is_brief(blocks: &[Block]) -> bool {
    !has_scene(blocks) && blocks.iter().any(|b| !matches!(b, Block::Title(_)))
}

/// What the language model is told a screenplay looks like: exactly what [`screenplay::parse`]
/// reads.
const SCREENWRITER: &str = "You are a screenwriter. Write a short screenplay in Markdown for \
     the brief you are given. Format, exactly: a first line `# Title`; each scene starts with a \
     heading line such as `INT. WORKSHOP - NIGHT` or `EXT. BEACH - DAY`; then short action \
     paragraphs, each one shot, describing only what the camera sees; a character's first \
     appearance gives their look in parentheses, e.g. `MARA (30s, short grey hair, blue apron) \
     walks in.`; dialogue as a line with the character's name in capitals followed by the \
     spoken line on the next line. Keep to the number of scenes, characters and the length the \
     brief asks for. Write nothing but the screenplay.";

/// Tokens the screenplay may take: 1500, plus twice the brief's own (about 4 bytes a token) as
/// a long brief makes a longer screenplay, within the studio's limit of 8192.
fn screenplay_tokens(brief: &str) -> u32 {
    (1500 + brief.len() / 2).min(8192) as u32
}

/// A brief (no scene heading) turned into a screenplay by the language model and parsed:
/// greedy, so the same brief and model give the same plan.
fn screenplay_from_brief(brief: &str) -> Result<Vec<Block>, PluginError> {
    let message = |role: &str, text: &str| host::text::ChatMessage {
        role: role.into(),
        text: text.into(),
        images: Vec::new(),
    };
    let options = host::text::ChatOptions {
        max_tokens: screenplay_tokens(brief),
        temperature: 0.0,
        seed: 0,
        stop: Vec::new(),
        json_schema: None,
    };
    host::progress(0, 1, "writing a screenplay from the brief");
    let reply = host::text::chat(
        &[
            message("system", SCREENWRITER),
            message("user", brief.trim()),
        ],
        &options,
    )
    .map_err(|err| match err {
        PluginError::Denied(_) => PluginError::InvalidInput(
            "the script has no scene heading (such as `INT. KITCHEN - DAY`), so it is a brief, \
             and planning from a brief needs the language model: grant this plugin \
             `text-generation`, or write a screenplay"
                .into(),
        ),
        PluginError::Failed(why) => PluginError::Failed(format!(
            "planning from a brief needs a language model: {why}"
        )),
        other => other,
    })?;
    host::progress(1, 1, "writing a screenplay from the brief");
    if reply.finish == host::text::FinishReason::MaxTokens {
        host::warn(&format!(
            "the language model `{}` used all {} tokens: the plan covers only the screenplay \
             it wrote until then",
            reply.model, options.max_tokens
        ));
    }
    let blocks = screenplay::parse(&reply.text);
    if !has_scene(&blocks) {
        return Err(PluginError::Failed(format!(
            "the language model `{}` wrote no scene heading (such as `INT. KITCHEN - DAY`) for \
             this brief, so there is nothing to plan; it began: {:?}",
            reply.model,
            reply.text.trim().chars().take(200).collect::<String>()
        )));
    }
    Ok(blocks)
}

/// Asks the host's text model to turn each action into one visual sentence. Any refusal
/// (capability not granted, no model) keeps the deterministic plan.
fn refine_with_text_model(board: &mut Storyboard) {
    let total = board.shots.len() as u32;
    for (i, shot) in board.shots.iter_mut().enumerate() {
        let prompt = format!(
            "Rewrite this screenplay action as one sentence describing only what the camera sees, \
             present tense, under 40 words, no dialogue:\n{}",
            shot.action
        );
        match host::text::complete(&prompt, 80) {
            Ok(text) => {
                let text = text.trim();
                if !text.is_empty() && text.len() <= 400 && !text.contains('\n') {
                    shot.action = text.to_string();
                }
                host::progress(i as u32 + 1, total, "refining shots");
            }
            Err(PluginError::Denied(_)) => {
                host::debug("text-generation not granted: keeping the deterministic plan");
                return;
            }
            Err(err) => {
                host::warn(&format!(
                    "text model unavailable ({err}): keeping the deterministic plan"
                ));
                return;
            }
        }
    }
}
