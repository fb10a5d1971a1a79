//! The data of one plugin call's store, and the host imports: each import validates its
//! arguments, asks the capability granter, runs the host service with the plugin's clock
//! stopped, and writes the call to the audit log. No import touches files or the network
//! itself; WASI is linked with no preopened directories, no sockets and frozen clocks.

use crate::PluginError;
use crate::capability::{Capability, Grants};
use crate::limits::{CallClock, Limits, MemoryLimiter};
use crate::services::{AuditEntry, HostServices, LogLevel};
use crate::wit::latest::{assets, generation, log, media, progress, project, text, types, vision};
use crate::wit::v0_1_0;
use crate::{ChatMessage, ChatOptions, ChatReply};
use std::sync::Arc;
use std::time::Duration;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{HostMonotonicClock, HostWallClock, WasiCtx, WasiCtxView, WasiView};

/// Longest id or document name accepted from a plugin.
const MAX_ID_BYTES: usize = 256;
/// Most of the guest's stderr kept to explain a crash.
const STDERR_BYTES: usize = 4096;
/// Most search results one call may return.
const MAX_SEARCH_RESULTS: u32 = 1000;
/// Bounds of one `text.chat` request beyond the transfer cap: turns, images shown (each costs
/// the model hundreds of tokens), stop strings and their length, and the JSON Schema's size.
const MAX_CHAT_MESSAGES: usize = 256;
const MAX_CHAT_IMAGES: usize = 16;
/// Reference images of one `generation.image` call.
const MAX_REFERENCES: usize = 8;
const MAX_STOP_STRINGS: usize = 16;
const MAX_STOP_BYTES: usize = 256;
const MAX_SCHEMA_BYTES: usize = 64 << 10;
/// Highest gain on a timeline clip's sound (+12 dB, enough to lift a quiet take); the engine
/// refuses more.
const MAX_VOLUME: f32 = 4.0;

pub(crate) struct PluginState {
    plugin_id: String,
    grants: Grants,
    services: Arc<dyn HostServices>,
    limits: Limits,
    wasi: WasiCtx,
    table: ResourceTable,
    pub limiter: MemoryLimiter,
    pub clock: CallClock,
    pub stderr: MemoryOutputPipe,
}

impl PluginState {
    pub fn new(
        plugin_id: &str,
        grants: Grants,
        services: Arc<dyn HostServices>,
        limits: Limits,
    ) -> PluginState {
        let stderr = MemoryOutputPipe::new(STDERR_BYTES);
        let mut wasi = WasiCtx::builder();
        wasi.stderr(stderr.clone())
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false);
        if !grants.allows(Capability::Clock) {
            wasi.wall_clock(FrozenClock).monotonic_clock(FrozenClock);
        }
        PluginState {
            plugin_id: plugin_id.to_string(),
            grants,
            services,
            limits,
            wasi: wasi.build(),
            table: ResourceTable::new(),
            limiter: MemoryLimiter::new(limits.memory_bytes),
            clock: CallClock::start(),
            stderr,
        }
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Starts a host import: checks arguments and grant, stops the plugin's clock.
    fn begin(
        &mut self,
        function: &'static str,
        capability: Option<Capability>,
        detail: String,
        transfer_bytes: usize,
    ) -> Result<HostCall, PluginError> {
        let call = HostCall {
            function,
            capability,
            detail,
        };
        let checked = match capability {
            Some(capability) => self.grants.check(capability),
            None => Ok(()),
        }
        .and_then(|()| {
            if transfer_bytes > self.limits.max_transfer_bytes {
                Err(PluginError::InvalidInput(format!(
                    "{function}: {transfer_bytes} bytes exceed the {} byte limit per call",
                    self.limits.max_transfer_bytes
                )))
            } else {
                Ok(())
            }
        });
        if let Err(err) = checked {
            self.record(&call, matches!(err, PluginError::Denied(_)), Some(&err));
            return Err(err);
        }
        self.clock.enter_host();
        Ok(call)
    }

    /// Ends a host import: restarts the plugin's clock and audits the outcome.
    fn finish<T>(
        &mut self,
        call: HostCall,
        result: Result<T, PluginError>,
    ) -> Result<T, PluginError> {
        self.clock.leave_host();
        self.record(&call, false, result.as_ref().err());
        result
    }

    fn record(&self, call: &HostCall, denied: bool, error: Option<&PluginError>) {
        self.services.audit(AuditEntry {
            plugin_id: self.plugin_id.clone(),
            function: call.function,
            capability: call.capability,
            allowed: !denied,
            error: error.map(describe),
            detail: call.detail.clone(),
        });
    }
}

struct HostCall {
    function: &'static str,
    capability: Option<Capability>,
    detail: String,
}

/// A one-line description of an error returned to a plugin.
pub(crate) fn describe(err: &PluginError) -> String {
    match err {
        PluginError::Denied(cap) => format!("capability `{cap}` not granted"),
        PluginError::NotFound(what) => format!("not found: {what}"),
        PluginError::InvalidInput(why) => format!("invalid input: {why}"),
        PluginError::Failed(why) => format!("failed: {why}"),
        PluginError::Cancelled => "cancelled".to_string(),
    }
}

/// An asset id, document name or similar: bounded, printable, no path tricks.
fn check_id(kind: &str, id: &str) -> Result<(), PluginError> {
    if id.is_empty() || id.len() > MAX_ID_BYTES || id.chars().any(char::is_control) {
        return Err(PluginError::InvalidInput(format!(
            "{kind} `{}` is empty, too long or not printable",
            id.escape_debug()
        )));
    }
    if id.contains("..") || id.starts_with('/') || id.contains('\\') {
        return Err(PluginError::InvalidInput(format!(
            "{kind} `{id}` must not be a path"
        )));
    }
    Ok(())
}

/// Abbreviates an argument for the audit log.
fn abbreviate(text: &str) -> String {
    truncate(text, 80)
}

fn truncate(text: &str, keep: usize) -> String {
    if text.len() <= keep {
        return text.to_string();
    }
    let mut end = keep;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes)", &text[..end], text.len())
}

/// The clock a plugin sees without the `clock` capability: always zero, so plugins are
/// deterministic and cannot time the host.
struct FrozenClock;

impl HostWallClock for FrozenClock {
    fn resolution(&self) -> Duration {
        Duration::from_secs(1)
    }
    fn now(&self) -> Duration {
        Duration::ZERO
    }
}

impl HostMonotonicClock for FrozenClock {
    fn resolution(&self) -> u64 {
        1_000_000_000
    }
    fn now(&self) -> u64 {
        0
    }
}

impl WasiView for PluginState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl types::Host for PluginState {}

impl log::Host for PluginState {
    async fn write(&mut self, level: log::Level, message: String) {
        let level = match level {
            log::Level::Debug => LogLevel::Debug,
            log::Level::Info => LogLevel::Info,
            log::Level::Warn => LogLevel::Warn,
            log::Level::Error => LogLevel::Error,
        };
        // Capped so a plugin cannot flood the host log.
        self.services
            .log(&self.plugin_id, level, &truncate(&message, 2000));
    }
}

impl progress::Host for PluginState {
    async fn report(&mut self, done: u32, total: u32, message: String) {
        self.services.progress(
            &self.plugin_id,
            done.min(total),
            total,
            &abbreviate(&message),
        );
    }
}

impl project::Host for PluginState {
    async fn list_documents(&mut self) -> Result<Vec<String>, PluginError> {
        let call = self.begin(
            "project.list-documents",
            Some(Capability::ProjectRead),
            String::new(),
            0,
        )?;
        let result = self.services.list_documents().await;
        self.finish(call, result)
    }

    async fn read_document(&mut self, name: String) -> Result<String, PluginError> {
        let call = self.begin(
            "project.read-document",
            Some(Capability::ProjectRead),
            abbreviate(&name),
            name.len(),
        )?;
        let services = self.services.clone();
        let cap = self.limits.max_transfer_bytes;
        let result = async {
            check_id("document name", &name)?;
            let text = services.read_document(&name).await?;
            fits("project.read-document", text.len(), cap)?;
            Ok(text)
        }
        .await;
        self.finish(call, result)
    }

    async fn write_document(&mut self, name: String, content: String) -> Result<(), PluginError> {
        let detail = format!("{} ({} bytes)", abbreviate(&name), content.len());
        let call = self.begin(
            "project.write-document",
            Some(Capability::ProjectWrite),
            detail,
            content.len(),
        )?;
        let services = self.services.clone();
        let result = async {
            check_id("document name", &name)?;
            services.write_document(&name, &content).await
        }
        .await;
        self.finish(call, result)
    }
}

/// A value the host is about to hand the plugin must fit the transfer cap too.
fn fits(function: &str, bytes: usize, cap: usize) -> Result<(), PluginError> {
    if bytes > cap {
        return Err(PluginError::Failed(format!(
            "{function}: the result is {bytes} bytes, over the {cap} byte limit per call"
        )));
    }
    Ok(())
}

impl assets::Host for PluginState {
    async fn search(
        &mut self,
        query: String,
        limit: u32,
    ) -> Result<Vec<types::AssetInfo>, PluginError> {
        let detail = format!("{} (limit {limit})", abbreviate(&query));
        let call = self.begin(
            "assets.search",
            Some(Capability::AssetsRead),
            detail,
            query.len(),
        )?;
        let result = self
            .services
            .search_assets(&query, limit.min(MAX_SEARCH_RESULTS))
            .await;
        self.finish(call, result)
    }

    async fn info(&mut self, id: String) -> Result<types::AssetInfo, PluginError> {
        let call = self.begin(
            "assets.info",
            Some(Capability::AssetsRead),
            abbreviate(&id),
            id.len(),
        )?;
        let services = self.services.clone();
        let result = async {
            check_id("asset id", &id)?;
            services.asset_info(&id).await
        }
        .await;
        self.finish(call, result)
    }

    async fn read(&mut self, id: String, offset: u64, length: u32) -> Result<Vec<u8>, PluginError> {
        let detail = format!("{} @{offset}+{length}", abbreviate(&id));
        let call = self.begin(
            "assets.read",
            Some(Capability::AssetsRead),
            detail,
            id.len(),
        )?;
        let services = self.services.clone();
        let length = length.min(u32::try_from(self.limits.max_transfer_bytes).unwrap_or(u32::MAX));
        let result = async {
            check_id("asset id", &id)?;
            services.read_asset(&id, offset, length).await
        }
        .await;
        self.finish(call, result)
    }

    async fn write(
        &mut self,
        name: String,
        mime: String,
        data: Vec<u8>,
        tags: Vec<String>,
    ) -> Result<types::AssetInfo, PluginError> {
        let detail = format!("{} ({mime}, {} bytes)", abbreviate(&name), data.len());
        let size =
            data.len() + name.len() + mime.len() + tags.iter().map(String::len).sum::<usize>();
        let call = self.begin("assets.write", Some(Capability::AssetsWrite), detail, size)?;
        let services = self.services.clone();
        let result = async {
            check_id("asset name", &name)?;
            services.write_asset(&name, &mime, data, tags).await
        }
        .await;
        self.finish(call, result)
    }
}

fn describe_request(request: &types::GenerationRequest) -> String {
    format!(
        "{}x{}x{} seed {}: {}",
        request.width,
        request.height,
        request.frames,
        request.seed,
        abbreviate(&request.prompt)
    )
}

fn request_bytes(request: &types::GenerationRequest) -> usize {
    request.prompt.len() + request.negative_prompt.len()
}

impl generation::Host for PluginState {
    async fn image(
        &mut self,
        request: types::GenerationRequest,
        references: Vec<String>,
    ) -> Result<types::AssetInfo, PluginError> {
        PluginState::image(self, request, references).await
    }

    async fn text_to_video(
        &mut self,
        request: types::GenerationRequest,
    ) -> Result<types::AssetInfo, PluginError> {
        let call = self.begin(
            "generation.text-to-video",
            Some(Capability::Generate),
            describe_request(&request),
            request_bytes(&request),
        )?;
        let result = self.services.generate_video(request, None).await;
        self.finish(call, result)
    }

    async fn image_to_video(
        &mut self,
        request: types::GenerationRequest,
        start_frame: String,
    ) -> Result<types::AssetInfo, PluginError> {
        let detail = format!(
            "from {}: {}",
            abbreviate(&start_frame),
            describe_request(&request)
        );
        let call = self.begin(
            "generation.image-to-video",
            Some(Capability::Generate),
            detail,
            request_bytes(&request),
        )?;
        let services = self.services.clone();
        let result = async {
            check_id("start frame asset id", &start_frame)?;
            services.generate_video(request, Some(start_frame)).await
        }
        .await;
        self.finish(call, result)
    }
}

impl v0_1_0::generation::Host for PluginState {
    async fn image(
        &mut self,
        request: types::GenerationRequest,
    ) -> Result<types::AssetInfo, PluginError> {
        PluginState::image(self, request, Vec::new()).await
    }

    async fn text_to_video(
        &mut self,
        request: types::GenerationRequest,
    ) -> Result<types::AssetInfo, PluginError> {
        generation::Host::text_to_video(self, request).await
    }

    async fn image_to_video(
        &mut self,
        request: types::GenerationRequest,
        start_frame: String,
    ) -> Result<types::AssetInfo, PluginError> {
        generation::Host::image_to_video(self, request, start_frame).await
    }
}

impl PluginState {
    /// `generation.image`; 0.1.0's takes no references.
    async fn image(
        &mut self,
        request: types::GenerationRequest,
        references: Vec<String>,
    ) -> Result<types::AssetInfo, PluginError> {
        let detail = if references.is_empty() {
            describe_request(&request)
        } else {
            format!(
                "with {}: {}",
                abbreviate(&references.join(",")),
                describe_request(&request)
            )
        };
        let bytes = request_bytes(&request) + references.iter().map(String::len).sum::<usize>();
        let call = self.begin(
            "generation.image",
            Some(Capability::Generate),
            detail,
            bytes,
        )?;
        let services = self.services.clone();
        let result = async {
            if references.len() > MAX_REFERENCES {
                return Err(PluginError::InvalidInput(format!(
                    "{} reference images; at most {MAX_REFERENCES}",
                    references.len()
                )));
            }
            for id in &references {
                check_id("reference asset id", id)?;
            }
            services.generate_image(request, references).await
        }
        .await;
        self.finish(call, result)
    }

    /// `text.complete`, the same in every API version.
    async fn complete(&mut self, prompt: String, max_tokens: u32) -> Result<String, PluginError> {
        let detail = format!("{} (max {max_tokens} tokens)", abbreviate(&prompt));
        let call = self.begin(
            "text.complete",
            Some(Capability::TextGeneration),
            detail,
            prompt.len(),
        )?;
        let services = self.services.clone();
        let cap = self.limits.max_transfer_bytes;
        let result = async {
            let text = services.complete_text(&prompt, max_tokens).await?;
            fits("text.complete", text.len(), cap)?;
            Ok(text)
        }
        .await;
        self.finish(call, result)
    }
}

impl text::Host for PluginState {
    async fn complete(&mut self, prompt: String, max_tokens: u32) -> Result<String, PluginError> {
        PluginState::complete(self, prompt, max_tokens).await
    }

    async fn chat(
        &mut self,
        messages: Vec<ChatMessage>,
        options: ChatOptions,
    ) -> Result<ChatReply, PluginError> {
        let last = messages.last().map_or("", |m| m.text.as_str());
        let detail = format!(
            "{} messages, max {} tokens{}: {}",
            messages.len(),
            options.max_tokens,
            if options.json_schema.is_some() {
                ", JSON"
            } else {
                ""
            },
            abbreviate(last)
        );
        // Showing the model images is seeing them: that is the `vision` grant's to allow.
        let capability = if messages.iter().any(|m| !m.images.is_empty()) {
            Capability::Vision
        } else {
            Capability::TextGeneration
        };
        let call = self.begin(
            "text.chat",
            Some(capability),
            detail,
            chat_bytes(&messages, &options),
        )?;
        let services = self.services.clone();
        let cap = self.limits.max_transfer_bytes;
        let result = async {
            check_chat(&messages, &options)?;
            let reply = services.chat(messages, options).await?;
            fits("text.chat", reply.text.len() + reply.model.len(), cap)?;
            Ok(reply)
        }
        .await;
        self.finish(call, result)
    }
}

impl v0_1_0::text::Host for PluginState {
    async fn complete(&mut self, prompt: String, max_tokens: u32) -> Result<String, PluginError> {
        PluginState::complete(self, prompt, max_tokens).await
    }
}

fn chat_bytes(messages: &[ChatMessage], options: &ChatOptions) -> usize {
    let messages: usize = messages
        .iter()
        .map(|m| m.role.len() + m.text.len() + m.images.iter().map(String::len).sum::<usize>())
        .sum();
    messages
        + options.stop.iter().map(String::len).sum::<usize>()
        + options.json_schema.as_ref().map_or(0, String::len)
}

/// The shape of a chat request: bounded counts, printable ids, a JSON Schema that is JSON.
fn check_chat(messages: &[ChatMessage], options: &ChatOptions) -> Result<(), PluginError> {
    let invalid = |why: String| Err(PluginError::InvalidInput(format!("text.chat: {why}")));
    if messages.is_empty() || messages.len() > MAX_CHAT_MESSAGES {
        return invalid(format!(
            "{} messages; send 1 to {MAX_CHAT_MESSAGES}",
            messages.len()
        ));
    }
    let images = messages.iter().map(|m| m.images.len()).sum::<usize>();
    if images > MAX_CHAT_IMAGES {
        return invalid(format!(
            "{images} images; at most {MAX_CHAT_IMAGES} per request"
        ));
    }
    for message in messages {
        check_id("message role", &message.role)?;
        for id in &message.images {
            check_id("image asset id", id)?;
        }
    }
    if options.stop.len() > MAX_STOP_STRINGS
        || options
            .stop
            .iter()
            .any(|s| s.is_empty() || s.len() > MAX_STOP_BYTES)
    {
        return invalid(format!(
            "at most {MAX_STOP_STRINGS} stop strings of 1 to {MAX_STOP_BYTES} bytes"
        ));
    }
    if let Some(schema) = &options.json_schema {
        if schema.len() > MAX_SCHEMA_BYTES {
            return invalid(format!(
                "the JSON Schema is {} bytes, over the {MAX_SCHEMA_BYTES} byte limit",
                schema.len()
            ));
        }
        if let Err(e) = serde_json::from_str::<serde_json::Value>(schema) {
            return invalid(format!("the JSON Schema is not JSON: {e}"));
        }
    }
    Ok(())
}

impl vision::Host for PluginState {
    async fn describe(
        &mut self,
        asset_id: String,
        question: String,
    ) -> Result<String, PluginError> {
        let detail = format!("{}: {}", abbreviate(&asset_id), abbreviate(&question));
        let call = self.begin(
            "vision.describe",
            Some(Capability::Vision),
            detail,
            asset_id.len() + question.len(),
        )?;
        let services = self.services.clone();
        let cap = self.limits.max_transfer_bytes;
        let result = async {
            check_id("asset id", &asset_id)?;
            let text = services.describe(&asset_id, &question).await?;
            fits("vision.describe", text.len(), cap)?;
            Ok(text)
        }
        .await;
        self.finish(call, result)
    }
}

impl media::Host for PluginState {
    async fn probe(&mut self, asset_id: String) -> Result<types::ClipInfo, PluginError> {
        let call = self.begin(
            "media.probe",
            Some(Capability::Media),
            abbreviate(&asset_id),
            asset_id.len(),
        )?;
        let services = self.services.clone();
        let result = async {
            check_id("asset id", &asset_id)?;
            services.probe(&asset_id).await
        }
        .await;
        self.finish(call, result)
    }

    async fn extract_frame(
        &mut self,
        asset_id: String,
        index: u32,
    ) -> Result<types::AssetInfo, PluginError> {
        let detail = format!("{} frame {index}", abbreviate(&asset_id));
        let call = self.begin(
            "media.extract-frame",
            Some(Capability::Media),
            detail,
            asset_id.len(),
        )?;
        let services = self.services.clone();
        let result = async {
            check_id("asset id", &asset_id)?;
            services.extract_frame(&asset_id, index).await
        }
        .await;
        self.finish(call, result)
    }

    async fn render_timeline(
        &mut self,
        timeline: types::Timeline,
        name: String,
    ) -> Result<types::AssetInfo, PluginError> {
        let detail = format!("{} ({} items)", abbreviate(&name), timeline.items.len());
        let call = self.begin(
            "media.render-timeline",
            Some(Capability::Render),
            detail,
            name.len(),
        )?;
        let services = self.services.clone();
        let result = async {
            check_id("output name", &name)?;
            for (index, item) in timeline.items.iter().enumerate() {
                if let types::TimelineItem::Clip(clip) = item {
                    check_id("asset id", &clip.asset_id)?;
                    check_volume(clip.volume, || {
                        format!(
                            "timeline item {index} (clip `{}` of shot `{}`)",
                            abbreviate(&clip.asset_id),
                            abbreviate(&clip.shot_id)
                        )
                    })?;
                }
            }
            if let Some(soundtrack) = &timeline.soundtrack {
                check_id("soundtrack asset id", &soundtrack.asset_id)?;
                check_volume(soundtrack.volume, || {
                    format!("the soundtrack (`{}`)", soundtrack.asset_id)
                })?;
            }
            services.render_timeline(timeline, &name).await
        }
        .await;
        self.finish(call, result)
    }

    async fn upscale(
        &mut self,
        asset_id: String,
        width: u32,
        height: u32,
    ) -> Result<types::AssetInfo, PluginError> {
        let detail = format!("{} to {width}x{height}", abbreviate(&asset_id));
        let call = self.begin(
            "media.upscale",
            Some(Capability::Media),
            detail,
            asset_id.len(),
        )?;
        let services = self.services.clone();
        let result = async {
            check_id("asset id", &asset_id)?;
            services.upscale(&asset_id, width, height).await
        }
        .await;
        self.finish(call, result)
    }

    async fn interpolate(
        &mut self,
        asset_id: String,
        fps: u32,
    ) -> Result<types::AssetInfo, PluginError> {
        let detail = format!("{} to {fps} fps", abbreviate(&asset_id));
        let call = self.begin(
            "media.interpolate",
            Some(Capability::Media),
            detail,
            asset_id.len(),
        )?;
        let services = self.services.clone();
        let result = async {
            check_id("asset id", &asset_id)?;
            services.interpolate(&asset_id, fps).await
        }
        .await;
        self.finish(call, result)
    }
}

/// A clip's or soundtrack's gain: a number from 0 (muted) to [`MAX_VOLUME`]; the error names
/// what (`what()`) had it.
fn check_volume(volume: f32, what: impl FnOnce() -> String) -> Result<(), PluginError> {
    if volume.is_finite() && (0.0..=MAX_VOLUME).contains(&volume) {
        return Ok(());
    }
    Err(PluginError::InvalidInput(format!(
        "{}: volume {volume} is not a gain from 0 to {MAX_VOLUME}",
        what()
    )))
}

/// 0.1.0's media: the same host code, with 0.1.0's records (no sound format in a clip's info,
/// every timeline clip at volume 1).
impl v0_1_0::media::Host for PluginState {
    async fn probe(
        &mut self,
        asset_id: String,
    ) -> Result<v0_1_0::types::ClipInfo, v0_1_0::types::PluginError> {
        let info = media::Host::probe(self, asset_id).await;
        v0_1_0::answer(info.map(v0_1_0::clip_info))
    }

    async fn extract_frame(
        &mut self,
        asset_id: String,
        index: u32,
    ) -> Result<v0_1_0::types::AssetInfo, v0_1_0::types::PluginError> {
        v0_1_0::answer(media::Host::extract_frame(self, asset_id, index).await)
    }

    async fn render_timeline(
        &mut self,
        timeline: v0_1_0::types::Timeline,
        name: String,
    ) -> Result<v0_1_0::types::AssetInfo, v0_1_0::types::PluginError> {
        let timeline = v0_1_0::timeline(timeline)
            .map_err(|e| v0_1_0::types::PluginError::Failed(format!("API 0.1.0 timeline: {e}")))?;
        v0_1_0::answer(media::Host::render_timeline(self, timeline, name).await)
    }
}
