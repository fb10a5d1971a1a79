//! The host services a plugin call reaches through its imports: the trait the studio
//! implements over its database, asset library, job queue and audit log. The plugin host
//! has checked the capability and argument sizes before any method here runs, and audits
//! the outcome afterwards; implementations only do the work (and validate ids).

use crate::PluginError;
use crate::capability::Capability;
use crate::types::{AssetInfo, ClipInfo, GenerationRequest, Timeline};
use crate::{ChatMessage, ChatOptions, ChatReply};
use async_trait::async_trait;

/// Severity of a plugin's log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    Debug,
    Info,
    Warn,
    Error,
}

/// One host import call, as the audit log records it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct AuditEntry {
    pub plugin_id: String,
    /// `interface.function`, e.g. `assets.read`.
    pub function: &'static str,
    /// The capability the call needed; `None` for always-granted imports.
    pub capability: Option<Capability>,
    /// Whether the grant check let it through.
    pub allowed: bool,
    /// `None` on success, else the error returned to the plugin.
    pub error: Option<String>,
    /// The arguments, abbreviated.
    pub detail: String,
}

/// What plugins can reach. One value serves one call (bound to a project and, when run by
/// the job queue, a job).
#[async_trait]
pub trait HostServices: Send + Sync {
    fn log(&self, plugin_id: &str, level: LogLevel, message: &str);
    fn progress(&self, plugin_id: &str, done: u32, total: u32, message: &str);
    fn audit(&self, entry: AuditEntry);

    async fn list_documents(&self) -> Result<Vec<String>, PluginError>;
    async fn read_document(&self, name: &str) -> Result<String, PluginError>;
    async fn write_document(&self, name: &str, content: &str) -> Result<(), PluginError>;

    async fn search_assets(&self, query: &str, limit: u32) -> Result<Vec<AssetInfo>, PluginError>;
    async fn asset_info(&self, id: &str) -> Result<AssetInfo, PluginError>;
    async fn read_asset(&self, id: &str, offset: u64, length: u32) -> Result<Vec<u8>, PluginError>;
    async fn write_asset(
        &self,
        name: &str,
        mime: &str,
        data: Vec<u8>,
        tags: Vec<String>,
    ) -> Result<AssetInfo, PluginError>;

    /// A still from the image model, conditioned on `references` (image asset ids, possibly
    /// none).
    async fn generate_image(
        &self,
        request: GenerationRequest,
        references: Vec<String>,
    ) -> Result<AssetInfo, PluginError>;
    /// Text-to-video, or image-to-video when `start_frame` (an image asset id) is given.
    async fn generate_video(
        &self,
        request: GenerationRequest,
        start_frame: Option<String>,
    ) -> Result<AssetInfo, PluginError>;
    async fn complete_text(&self, prompt: &str, max_tokens: u32) -> Result<String, PluginError>;
    /// `options.json_schema`, when present, is JSON (the plugin host checked).
    async fn chat(
        &self,
        messages: Vec<ChatMessage>,
        options: ChatOptions,
    ) -> Result<ChatReply, PluginError>;
    /// Answers `question` about an image or video asset.
    async fn describe(&self, asset_id: &str, question: &str) -> Result<String, PluginError>;

    async fn probe(&self, asset_id: &str) -> Result<ClipInfo, PluginError>;
    async fn extract_frame(&self, asset_id: &str, index: u32) -> Result<AssetInfo, PluginError>;
    async fn render_timeline(
        &self,
        timeline: Timeline,
        name: &str,
    ) -> Result<AssetInfo, PluginError>;
    /// A new video asset: `asset_id` upscaled to fit `width`x`height` (GPU work the host
    /// queues).
    async fn upscale(
        &self,
        asset_id: &str,
        width: u32,
        height: u32,
    ) -> Result<AssetInfo, PluginError>;
    /// A new video asset: `asset_id` retimed to `fps` by frame interpolation.
    async fn interpolate(&self, asset_id: &str, fps: u32) -> Result<AssetInfo, PluginError>;
}
