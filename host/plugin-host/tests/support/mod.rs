//! Shared by the plugin-host tests: the guest components, and an in-memory implementation of
//! the host services that records what plugins did (documents, assets, audit, logs).

#![allow(dead_code, reason = "each test binary uses a different part")]

#[path = "../../../../tests/support/guests.rs"]
pub mod guests;

use async_trait::async_trait;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use videosdgx_plugin_host::types::{
    AssetInfo, AssetKind, ClipInfo, GenerationRequest, ModelProfile, PlanInput, ProjectSettings,
    Style, Timeline, TimelineItem, Transition, TransitionKind,
};
use videosdgx_plugin_host::{
    AuditEntry, CallContext, ChatMessage, ChatOptions, ChatReply, FinishReason, Grants,
    HostServices, Limits, LogLevel, Manifest, Plugin, PluginError, PluginRuntime,
};

/// The language model `MemoryServices` says answered a `text.chat`.
pub const TEXT_MODEL: &str = "tiny/qwen3";

/// Host services over in-memory documents and assets. Text generation answers with a fixed
/// sentence after `text_delay` (to stand for a slow model).
#[derive(Default)]
pub struct MemoryServices {
    pub documents: Mutex<BTreeMap<String, String>>,
    pub assets: Mutex<BTreeMap<String, (AssetInfo, Vec<u8>)>>,
    pub audit: Mutex<Vec<AuditEntry>>,
    pub logs: Mutex<Vec<(LogLevel, String)>>,
    pub rendered: Mutex<Vec<Timeline>>,
    /// Every `text.chat` request's messages, in order.
    pub chats: Mutex<Vec<Vec<ChatMessage>>>,
    /// Every `text.chat` request's options, in order.
    pub chat_options: Mutex<Vec<ChatOptions>>,
    pub text_delay: Duration,
    pub text_reply: Option<String>,
}

impl MemoryServices {
    pub fn add_video(&self, id: &str, info: ClipInfo) {
        let asset = AssetInfo {
            id: id.into(),
            kind: AssetKind::Video,
            name: format!("{id}.mp4"),
            mime: "video/mp4".into(),
            size_bytes: 0,
            tags: vec![],
        };
        self.assets
            .lock()
            .unwrap()
            .insert(id.into(), (asset, clip_bytes(&info)));
    }

    pub fn audit_functions(&self) -> Vec<(String, bool)> {
        self.audit
            .lock()
            .unwrap()
            .iter()
            .map(|e| (e.function.to_string(), e.allowed))
            .collect()
    }
}

/// Video "contents" for the in-memory store: the probe answer, serialised.
fn clip_bytes(info: &ClipInfo) -> Vec<u8> {
    serde_json::to_vec(info).unwrap()
}

fn not_found(kind: &str, id: &str) -> PluginError {
    PluginError::NotFound(format!("{kind} `{id}`"))
}

#[async_trait]
impl HostServices for MemoryServices {
    fn log(&self, _plugin_id: &str, level: LogLevel, message: &str) {
        self.logs.lock().unwrap().push((level, message.to_string()));
    }
    fn progress(&self, _plugin_id: &str, _done: u32, _total: u32, _message: &str) {}
    fn audit(&self, entry: AuditEntry) {
        self.audit.lock().unwrap().push(entry);
    }

    async fn list_documents(&self) -> Result<Vec<String>, PluginError> {
        Ok(self.documents.lock().unwrap().keys().cloned().collect())
    }
    async fn read_document(&self, name: &str) -> Result<String, PluginError> {
        self.documents
            .lock()
            .unwrap()
            .get(name)
            .cloned()
            .ok_or_else(|| not_found("document", name))
    }
    async fn write_document(&self, name: &str, content: &str) -> Result<(), PluginError> {
        self.documents
            .lock()
            .unwrap()
            .insert(name.into(), content.into());
        Ok(())
    }
    async fn search_assets(&self, query: &str, limit: u32) -> Result<Vec<AssetInfo>, PluginError> {
        let assets = self.assets.lock().unwrap();
        Ok(assets
            .values()
            .filter(|(a, _)| a.name.contains(query))
            .take(limit as usize)
            .map(|(a, _)| a.clone())
            .collect())
    }
    async fn asset_info(&self, id: &str) -> Result<AssetInfo, PluginError> {
        self.assets
            .lock()
            .unwrap()
            .get(id)
            .map(|(a, _)| a.clone())
            .ok_or_else(|| not_found("asset", id))
    }
    async fn read_asset(&self, id: &str, offset: u64, length: u32) -> Result<Vec<u8>, PluginError> {
        let assets = self.assets.lock().unwrap();
        let (_, bytes) = assets.get(id).ok_or_else(|| not_found("asset", id))?;
        let start = (offset as usize).min(bytes.len());
        Ok(bytes[start..(start + length as usize).min(bytes.len())].to_vec())
    }
    async fn write_asset(
        &self,
        name: &str,
        mime: &str,
        data: Vec<u8>,
        tags: Vec<String>,
    ) -> Result<AssetInfo, PluginError> {
        let mut assets = self.assets.lock().unwrap();
        let id = format!("asset-{}", assets.len() + 1);
        let info = AssetInfo {
            id: id.clone(),
            kind: AssetKind::Other,
            name: name.into(),
            mime: mime.into(),
            size_bytes: data.len() as u64,
            tags,
        };
        assets.insert(id, (info.clone(), data));
        Ok(info)
    }
    async fn generate_image(
        &self,
        _request: GenerationRequest,
        _references: Vec<String>,
    ) -> Result<AssetInfo, PluginError> {
        Err(PluginError::Failed(
            "no image model in this test host".into(),
        ))
    }
    async fn generate_video(
        &self,
        _request: GenerationRequest,
        _start: Option<String>,
    ) -> Result<AssetInfo, PluginError> {
        Err(PluginError::Failed(
            "no video model in this test host".into(),
        ))
    }
    async fn complete_text(&self, _prompt: &str, _max_tokens: u32) -> Result<String, PluginError> {
        // Even a zero sleep waits for the timer's next 1 ms tick: skip it when no delay is asked.
        if !self.text_delay.is_zero() {
            tokio::time::sleep(self.text_delay).await;
        }
        self.text_reply
            .clone()
            .ok_or_else(|| PluginError::Failed("no text model in this test host".into()))
    }
    async fn chat(
        &self,
        messages: Vec<ChatMessage>,
        options: ChatOptions,
    ) -> Result<ChatReply, PluginError> {
        self.chats.lock().unwrap().push(messages.clone());
        self.chat_options.lock().unwrap().push(options.clone());
        let text = self.complete_text("", options.max_tokens).await?;
        Ok(ChatReply {
            generated_tokens: text.len() as u32,
            prompt_tokens: messages.len() as u32,
            text,
            model: TEXT_MODEL.into(),
            finish: FinishReason::EndOfTurn,
        })
    }
    async fn describe(&self, asset_id: &str, _question: &str) -> Result<String, PluginError> {
        if !self.assets.lock().unwrap().contains_key(asset_id) {
            return Err(not_found("asset", asset_id));
        }
        self.complete_text("", 0).await
    }
    async fn probe(&self, asset_id: &str) -> Result<ClipInfo, PluginError> {
        let assets = self.assets.lock().unwrap();
        let (_, bytes) = assets
            .get(asset_id)
            .ok_or_else(|| not_found("asset", asset_id))?;
        serde_json::from_slice(bytes)
            .map_err(|_| PluginError::InvalidInput(format!("asset `{asset_id}` is not a video")))
    }
    /// Frame `index` of a video as a new image asset `<video>-frame-<index>`.
    async fn extract_frame(&self, asset_id: &str, index: u32) -> Result<AssetInfo, PluginError> {
        let info = self.probe(asset_id).await?;
        if index >= info.frames {
            return Err(PluginError::InvalidInput(format!(
                "frame {index} of a {}-frame video",
                info.frames
            )));
        }
        let frame = AssetInfo {
            id: format!("{asset_id}-frame-{index}"),
            kind: AssetKind::Image,
            name: format!("{asset_id}-frame-{index}.png"),
            mime: "image/png".into(),
            size_bytes: 0,
            tags: vec![],
        };
        let mut assets = self.assets.lock().unwrap();
        assets.insert(frame.id.clone(), (frame.clone(), Vec::new()));
        Ok(frame)
    }
    async fn render_timeline(
        &self,
        timeline: Timeline,
        name: &str,
    ) -> Result<AssetInfo, PluginError> {
        for item in &timeline.items {
            if let TimelineItem::Clip(clip) = item {
                self.asset_info(&clip.asset_id).await?;
            }
        }
        self.rendered.lock().unwrap().push(timeline);
        Ok(AssetInfo {
            id: "render-1".into(),
            kind: AssetKind::Video,
            name: name.into(),
            mime: "video/mp4".into(),
            size_bytes: 0,
            tags: vec![],
        })
    }
    /// The video recorded again at the new size, as `<video>-<width>x<height>`.
    async fn upscale(
        &self,
        asset_id: &str,
        width: u32,
        height: u32,
    ) -> Result<AssetInfo, PluginError> {
        let info = self.probe(asset_id).await?;
        let id = format!("{asset_id}-{width}x{height}");
        self.add_video(
            &id,
            ClipInfo {
                width,
                height,
                ..info
            },
        );
        self.asset_info(&id).await
    }
    /// The video recorded again at the new rate, as `<video>-<fps>fps`.
    async fn interpolate(&self, asset_id: &str, fps: u32) -> Result<AssetInfo, PluginError> {
        let info = self.probe(asset_id).await?;
        let id = format!("{asset_id}-{fps}fps");
        let frames = (u64::from(info.duration_ms) * u64::from(fps) / 1000) as u32;
        self.add_video(
            &id,
            ClipInfo {
                fps,
                frames,
                ..info
            },
        );
        self.asset_info(&id).await
    }
}

/// A runtime without a disk cache, shared by a test binary.
pub fn runtime() -> &'static PluginRuntime {
    static RUNTIME: std::sync::OnceLock<PluginRuntime> = std::sync::OnceLock::new();
    RUNTIME.get_or_init(|| PluginRuntime::new(None).expect("creating the plugin runtime"))
}

/// Loads the first-party or test plugin crate `name` with its shipped manifest.
pub fn load(name: &str) -> Plugin {
    let manifest = Manifest::parse(&guests::manifest_text(name)).expect("shipped manifest parses");
    runtime()
        .load(manifest, &guests::component(name))
        .expect("shipped plugin loads")
}

pub fn context(services: Arc<MemoryServices>, grants: Grants, limits: Limits) -> CallContext {
    CallContext {
        services,
        grants,
        limits,
    }
}

/// A planner input for `script` with empty style and the Wan 2.1 480p model profile.
/// The Wan 2.1 480p model profile the studio hands plugins.
pub fn wan_profile() -> ModelProfile {
    ModelProfile {
        family: "wan2.1".into(),
        width: 832,
        height: 480,
        fps: 16,
        max_frames: 81,
        frame_step: 4,
    }
}

pub fn input(script: &str) -> PlanInput {
    PlanInput {
        script: script.into(),
        settings: ProjectSettings {
            title: String::new(),
            style: Style {
                look: String::new(),
                lighting: String::new(),
                negative: String::new(),
            },
            characters: vec![],
            model: wan_profile(),
            shot_transition: Transition {
                kind: TransitionKind::Cut,
                duration_ms: 0,
            },
            scene_transition: Transition {
                kind: TransitionKind::Crossfade,
                duration_ms: 500,
            },
            title_cards: false,
        },
    }
}
