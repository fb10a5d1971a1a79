//! The storyboard planner given a brief (a script with no scene heading): the language model
//! writes the screenplay (scripted here by `MemoryServices`), asked greedily so the same brief
//! gives the same plan; an answer with no scene heading, or no language model, ends with an
//! error that says which plugin and model and what to do; a screenplay never goes to the model.

mod support;

use std::sync::Arc;
use support::{MemoryServices, TEXT_MODEL, context, input, load, runtime};
use videosdgx_plugin_host::types::Storyboard;
use videosdgx_plugin_host::{CallError, Capability, Grants, Limits, PluginError};

const BRIEF: &str = "A 20-second night scene: a clockmaker finishes a mechanical bird, \
     which flies off the roof at dawn.";

/// What the scripted model answers for [`BRIEF`].
const SCREENPLAY: &str = "# Quiet Hours

INT. CLOCK SHOP - NIGHT

MARA (30s, grey apron, brass goggles) winds the key of a small mechanical bird.

MARA
Fly.

EXT. ROOFTOP - DAWN

The mechanical bird beats its wings and lifts into the pink sky.
";

fn services(reply: &str) -> Arc<MemoryServices> {
    Arc::new(MemoryServices {
        text_reply: Some(reply.into()),
        ..MemoryServices::default()
    })
}

fn text_generation() -> Grants {
    Grants::new([Capability::TextGeneration])
}

async fn plan(
    script: &str,
    grants: Grants,
    services: &Arc<MemoryServices>,
) -> Result<Storyboard, CallError> {
    let planner = load("storyboard-planner");
    let ctx = context(services.clone(), grants, Limits::default());
    runtime().plan(&planner, &ctx, &input(script)).await
}

#[tokio::test]
async fn a_brief_is_planned_from_the_language_models_screenplay() {
    let services = services(SCREENPLAY);
    let board = plan(BRIEF, text_generation(), &services).await.unwrap();
    assert_eq!(board.title, "Quiet Hours");
    let scenes: Vec<_> = board
        .scenes
        .iter()
        .map(|s| (s.location.as_str(), s.time_of_day.as_str()))
        .collect();
    assert_eq!(scenes, [("CLOCK SHOP", "NIGHT"), ("ROOFTOP", "DAWN")]);
    let shots: Vec<_> = board.shots.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(shots, ["s01-01", "s02-01"]);
    assert_eq!(board.shots[0].dialogue[0].text, "Fly.");
    assert_eq!(board.characters.len(), 1);
    assert_eq!(
        board.characters[0].description,
        "30s, grey apron, brass goggles"
    );
    // Asked once, with the brief as the user's turn.
    let chats = services.chats.lock().unwrap().clone();
    let [messages] = chats.as_slice() else {
        panic!("one chat expected, got {}", chats.len())
    };
    assert_eq!(messages[0].role, "system");
    assert!(messages[0].text.contains("INT. WORKSHOP - NIGHT"));
    assert_eq!(
        (messages[1].role.as_str(), messages[1].text.as_str()),
        ("user", BRIEF)
    );
}

#[tokio::test]
async fn the_same_brief_is_asked_the_same_way_with_a_budget_that_grows_with_it() {
    let services = services(SCREENPLAY);
    let first = plan(BRIEF, text_generation(), &services).await.unwrap();
    let again = plan(BRIEF, text_generation(), &services).await.unwrap();
    assert_eq!(first, again);
    let long_brief = format!("{BRIEF} {}", "The bird circles the town once. ".repeat(200));
    plan(&long_brief, text_generation(), &services)
        .await
        .unwrap();

    let options = services.chat_options.lock().unwrap().clone();
    assert_eq!(options.len(), 3);
    for o in &options {
        assert_eq!((o.temperature, o.seed), (0.0, 0), "greedy: {o:?}");
        assert!(o.json_schema.is_none() && o.stop.is_empty());
    }
    assert_eq!(options[0], options[1]);
    assert!(options[0].max_tokens >= 1500, "{:?}", options[0]);
    assert!(
        options[2].max_tokens > options[0].max_tokens && options[2].max_tokens <= 8192,
        "a {}-byte brief got {} tokens",
        long_brief.len(),
        options[2].max_tokens
    );
}

#[tokio::test]
async fn a_screenplay_without_a_scene_heading_names_the_plugin_and_the_model() {
    let services = services("Sure! Here is a lovely story about a clockmaker and her bird.");
    let err = plan(BRIEF, text_generation(), &services).await.unwrap_err();
    assert!(
        matches!(err.plugin_error(), Some(PluginError::Failed(_))),
        "{err:?}"
    );
    let message = err.to_string();
    for needle in [
        "plugin `storyboard-planner`",
        &format!("the language model `{TEXT_MODEL}` wrote no scene heading"),
        "`INT. KITCHEN - DAY`",
        "nothing to plan",
        "it began: \"Sure! Here is a lovely story",
    ] {
        assert!(
            message.contains(needle),
            "{needle:?} missing from: {message}"
        );
    }
}

#[tokio::test]
async fn a_brief_without_the_language_model_says_to_grant_it_or_write_a_screenplay() {
    let services = services(SCREENPLAY);
    let err = plan(BRIEF, Grants::default(), &services).await.unwrap_err();
    assert!(
        matches!(err.plugin_error(), Some(PluginError::InvalidInput(m))
            if m.contains("no scene heading")
                && m.contains("grant this plugin `text-generation`, or write a screenplay")),
        "{err}"
    );
    assert!(services.chats.lock().unwrap().is_empty());
    assert_eq!(
        services.audit_functions(),
        [("text.chat".to_string(), false)]
    );

    // Granted, but the host has no language model.
    let no_model = Arc::new(MemoryServices::default());
    let err = plan(BRIEF, text_generation(), &no_model).await.unwrap_err();
    assert!(
        matches!(err.plugin_error(), Some(PluginError::Failed(m))
            if m.starts_with("planning from a brief needs a language model: ")),
        "{err}"
    );
}

#[tokio::test]
async fn a_screenplay_is_never_sent_to_the_language_model() {
    let services = services("A lamplit workshop full of clocks.");
    let board = plan(SCREENPLAY, text_generation(), &services)
        .await
        .unwrap();
    assert_eq!(board.scenes.len(), 2);
    assert!(services.chats.lock().unwrap().is_empty());
    // Only the per-shot refinement asks the model.
    assert!(
        services
            .audit_functions()
            .iter()
            .all(|(function, _)| function == "text.complete"),
        "{:?}",
        services.audit_functions()
    );
}

#[tokio::test]
async fn a_script_with_only_a_title_is_empty_not_a_brief() {
    let services = services(SCREENPLAY);
    let err = plan("# Quiet Hours\n", text_generation(), &services)
        .await
        .unwrap_err();
    assert!(
        matches!(err.plugin_error(), Some(PluginError::InvalidInput(m))
            if m.contains("no action or dialogue")),
        "{err}"
    );
    assert!(services.chats.lock().unwrap().is_empty());
}
