//! The host services one plugin call reaches, implemented over the studio: bound to one
//! project (documents and assets are that project's), one plugin and, when a job runs the call,
//! that job (audit rows and progress). The plugin host has checked grants and argument sizes
//! before a method here runs; these methods validate ids and do the work. Long work (generation,
//! rendering, file I/O) runs on blocking threads so the call's progress keeps flowing.

use super::registry;
use crate::app::App;
use crate::assets::{Asset, LoraTarget, MediaKind, NewAsset, get_asset};
use crate::db::now_ms;
use crate::error::StudioError;
use crate::finishing::{Finished, NO_INTERPOLATOR, NO_UPSCALER};
use crate::generation::{Length, RenderSettings, VideoRequest};
use crate::images::ImageRequest;
use crate::jobs::{self, JobState, NewJob};
use crate::language::{self, ChatAnswer, ChatRequest, ChatSettings, ChatTurn, Finish};
use async_trait::async_trait;
use rusqlite::{OptionalExtension, params};
use std::io::{Read, Seek, SeekFrom};
use std::ops::ControlFlow;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use videosdgx_engine::finishing::finish::FinishTarget;
use videosdgx_engine::video;
use videosdgx_plugin_host::types::{
    AssetInfo, AssetKind, AudioInfo, ClipInfo, GenerationRequest, Timeline, TimelineItem,
    TransitionKind,
};
use videosdgx_plugin_host::{
    AuditEntry, ChatMessage, ChatOptions, ChatReply, FinishReason, HostServices, LogLevel,
    PluginError,
};

/// Shared between a running call and whoever drives it: the latest progress the plugin (or a
/// host service working for it) reported, and a flag that asks the work to stop.
#[derive(Default)]
pub struct CallMonitor {
    latest: Mutex<Option<(String, u64, u64)>>,
    stop: AtomicBool,
}

impl CallMonitor {
    pub fn report(&self, stage: &str, step: u64, total: u64) -> ControlFlow<()> {
        *self.latest.lock().unwrap_or_else(|p| p.into_inner()) =
            Some((stage.to_string(), step, total));
        if self.stopped() {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    }

    /// The progress reported since the last call, if any.
    pub fn take(&self) -> Option<(String, u64, u64)> {
        self.latest.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    pub fn request_stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }

    pub fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }
}

/// What a plugin call is bound to.
pub struct StudioServices {
    app: Arc<App>,
    project_id: i64,
    job_id: Option<i64>,
    monitor: Arc<CallMonitor>,
}

/// Most bytes one `assets.read` returns; the plugin host caps transfers too.
const MAX_READ: u32 = 32 << 20;
/// The answer budget of `vision.describe`.
const DESCRIBE_TOKENS: u32 = 256;

impl StudioServices {
    pub fn new(
        app: Arc<App>,
        project_id: i64,
        job_id: Option<i64>,
        monitor: Arc<CallMonitor>,
    ) -> StudioServices {
        StudioServices {
            app,
            project_id,
            job_id,
            monitor,
        }
    }

    /// Runs blocking studio work off the plugin's executor thread.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&App) -> Result<T, PluginError> + Send + 'static,
    ) -> Result<T, PluginError> {
        let app = self.app.clone();
        tokio::task::spawn_blocking(move || f(&app))
            .await
            .map_err(|e| PluginError::Failed(format!("host task failed: {e}")))?
    }

    /// An asset of the bound project, by the id a plugin holds.
    fn project_asset(app: &App, project_id: i64, id: &str) -> Result<Asset, PluginError> {
        let missing = || PluginError::NotFound(format!("asset `{id}`"));
        let number: i64 = id.parse().map_err(|_| missing())?;
        let asset = get_asset(&app.db, number).map_err(|e| match e {
            StudioError::NotFound { .. } => missing(),
            other => failed(other),
        })?;
        if asset.project_id != Some(project_id) {
            return Err(missing());
        }
        Ok(asset)
    }

    /// The model this project's generations use: the one its shots name, else the only one
    /// installed.
    fn project_model(app: &App, project_id: i64) -> Result<String, PluginError> {
        let named: Vec<String> = app
            .db
            .with(|c| {
                let mut stmt = c.prepare(
                    "SELECT DISTINCT shots.model FROM shots
                     JOIN storyboards ON storyboards.id = shots.storyboard_id
                     WHERE storyboards.project_id = ?1 AND shots.model IS NOT NULL
                     ORDER BY shots.model",
                )?;
                Ok(stmt
                    .query_map([project_id], |r| r.get(0))?
                    .collect::<rusqlite::Result<_>>()?)
            })
            .map_err(failed)?;
        match named.as_slice() {
            [one] => return Ok(one.clone()),
            [] => {}
            several => {
                return Err(PluginError::Failed(format!(
                    "the project's shots use several models ({}): the host cannot tell which one a plugin's generation should use",
                    several.join(", ")
                )));
            }
        }
        let installed = crate::models::video_models(app.data_dir()).map_err(failed)?;
        match installed.as_slice() {
            [only] => Ok(only.name.clone()),
            [] => Err(PluginError::Failed(
                "no generation model is installed; pull one with `videosdgx models pull`".into(),
            )),
            several => Err(PluginError::Failed(format!(
                "several models are installed ({}) and the project's shots name none: set a shot's model",
                several
                    .iter()
                    .map(|m| m.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
        }
    }

    /// Runs `request` as a `chat` job on the GPU lane and waits for its answer. The plugin's
    /// own job shows the chat job's progress; stopping the plugin's call cancels the chat job
    /// (the call is dropped, and `run_to_end` cancels what nobody waits for).
    async fn ask(&self, request: ChatRequest) -> Result<ChatAnswer, PluginError> {
        // Without a language model the service is unavailable (`failed`), not the input bad.
        self.blocking(|app| language::configured(app).map(drop).map_err(failed))
            .await?;
        let params = serde_json::to_value(&request).map_err(failed)?;
        self.run_job("chat", params, "language model", "the language model's job")
            .await
    }

    async fn generate(
        &self,
        request: GenerationRequest,
        frames: usize,
        start_frame: Option<String>,
    ) -> Result<Asset, PluginError> {
        let (project_id, job_id, monitor) = (self.project_id, self.job_id, self.monitor.clone());
        self.blocking(move |app| {
            let references = match &start_frame {
                Some(id) => {
                    let asset = Self::project_asset(app, project_id, id)?;
                    if asset.kind != MediaKind::Image {
                        return Err(PluginError::InvalidInput(format!(
                            "start frame `{id}` is a {:?} asset, not an image",
                            asset.kind
                        )));
                    }
                    vec![asset.id]
                }
                None => Vec::new(),
            };
            let defaults = RenderSettings::default();
            let request = VideoRequest {
                project_id: Some(project_id),
                shot_id: None,
                model: Self::project_model(app, project_id)?,
                prompt: request.prompt,
                negative_prompt: request.negative_prompt,
                length: Length::Frames(frames),
                seed: Some(request.seed),
                references,
                start_frame_required: false,
                render: RenderSettings {
                    height: request.height as usize,
                    width: request.width as usize,
                    steps: request.steps.map_or(defaults.steps, |s| s as usize),
                    guidance: request.guidance.unwrap_or(defaults.guidance),
                    ..defaults
                },
                loras: crate::loras::for_project(app, project_id, LoraTarget::Video)
                    .map_err(failed)?,
            };
            let output = app
                .generator
                .generate_video(app, job_id, &request, &mut |stage, step, total| {
                    monitor.report(stage, step, total)
                })
                .map_err(generation_error)?;
            Ok(output.asset)
        })
        .await
    }

    /// Runs a `finish` job of a video asset of the bound project to `target` and waits for the
    /// new asset; like [`StudioServices::ask`], the plugin's job shows its progress and
    /// stopping the call cancels it.
    async fn finish(&self, asset_id: &str, target: String) -> Result<AssetInfo, PluginError> {
        let (project_id, id) = (self.project_id, asset_id.to_string());
        let asset = self
            .blocking(move |app| Self::project_asset(app, project_id, &id))
            .await?;
        if asset.kind != MediaKind::Video {
            return Err(PluginError::InvalidInput(format!(
                "asset `{asset_id}` is not a video"
            )));
        }
        let target: FinishTarget = target
            .parse()
            .map_err(|e| PluginError::InvalidInput(format!("{e:#}")))?;
        let params = serde_json::json!({ "asset_id": asset.id, "target": target });
        let finished: Finished = self
            .run_job("finish", params, "finish", "the finish job")
            .await
            .map_err(|e| match e {
                // A missing model is the studio's to fix, not the plugin's input.
                PluginError::InvalidInput(why) if why == NO_UPSCALER || why == NO_INTERPOLATOR => {
                    PluginError::Failed(why)
                }
                other => other,
            })?;
        self.blocking(move |app| {
            get_asset(&app.db, finished.asset_id)
                .map(|a| asset_info(&a))
                .map_err(failed)
        })
        .await
    }

    /// Runs a `kind` job of the bound project to its end and returns its result. The plugin's
    /// own job shows the job's progress (stages prefixed with `label`); stopping the plugin's
    /// call cancels the job (`run_to_end` cancels what nobody waits for). `what` names the job
    /// in the failure message.
    async fn run_job<T: serde::de::DeserializeOwned>(
        &self,
        kind: &str,
        params: serde_json::Value,
        label: &str,
        what: &str,
    ) -> Result<T, PluginError> {
        let new = NewJob {
            kind: kind.into(),
            params,
            max_attempts: None,
            project_id: Some(self.project_id),
        };
        let monitor = self.monitor.clone();
        let job = jobs::run_to_end(&self.app, new, &mut |p| {
            monitor.report(&format!("{label}: {}", p.stage), p.step, p.total)
        })
        .await
        .map_err(|e| match e {
            StudioError::Invalid(why) => PluginError::InvalidInput(why),
            e @ StudioError::NotFound { .. } => PluginError::NotFound(e.to_string()),
            other => failed(other),
        })?;
        match job.state {
            JobState::Succeeded => {
                serde_json::from_value(job.result.unwrap_or_default()).map_err(failed)
            }
            JobState::Cancelled => Err(PluginError::Cancelled),
            _ => Err(PluginError::Failed(format!(
                "{what} {} failed: {}",
                job.id,
                job.error.as_deref().unwrap_or("no error recorded")
            ))),
        }
    }
}

fn user_turn(text: &str, images: Vec<i64>) -> ChatTurn {
    ChatTurn {
        role: "user".into(),
        text: text.into(),
        images,
    }
}

/// A generation's error as the plugin sees it: the request's fault, a stop, or the host's.
fn generation_error(err: StudioError) -> PluginError {
    match err {
        StudioError::Invalid(why) | StudioError::Refused(why) => PluginError::InvalidInput(why),
        e if crate::generation::is_cancelled(&e) => PluginError::Cancelled,
        other => failed(other),
    }
}

fn failed(err: impl std::fmt::Display) -> PluginError {
    PluginError::Failed(format!("{err:#}"))
}

pub fn asset_info(asset: &Asset) -> AssetInfo {
    AssetInfo {
        id: asset.id.to_string(),
        kind: match asset.kind {
            MediaKind::Video => AssetKind::Video,
            MediaKind::Image => AssetKind::Image,
            MediaKind::Audio => AssetKind::Audio,
            MediaKind::Lora => AssetKind::Other,
        },
        name: asset.original_name.clone(),
        mime: asset.mime.clone(),
        size_bytes: asset.size_bytes,
        tags: asset.tags.clone(),
    }
}

pub fn clip_info(info: &video::VideoInfo) -> ClipInfo {
    ClipInfo {
        width: info.width,
        height: info.height,
        frames: info.frames as u32,
        fps: info.fps.round() as u32,
        duration_ms: (info.duration * 1000.0).round() as u32,
        audio: info.audio.map(|audio| AudioInfo {
            sample_rate: audio.sample_rate,
            channels: u32::from(audio.channels),
        }),
    }
}

/// Imports a file the host made for a plugin into the bound project.
fn import(
    app: &App,
    project_id: i64,
    path: &std::path::Path,
    name: String,
    tags: Vec<String>,
) -> Result<Asset, PluginError> {
    let meta = NewAsset {
        name,
        project_id: Some(project_id),
        tags,
        ..Default::default()
    };
    let imported = app.assets.import_file(&app.db, path, &meta);
    let _ = std::fs::remove_file(path);
    Ok(imported.map_err(failed)?.0)
}

/// A scratch file under the data directory, for outputs before they become assets.
fn scratch(app: &App, what: &str, ext: &str) -> Result<std::path::PathBuf, PluginError> {
    app.scratch_file(what, ext).map_err(failed)
}

/// The plugin API's edit list as the engine's timeline, with asset ids resolved to files of
/// the bound project. A clip's transition-in joins it to the item before; the first item has
/// none.
fn engine_timeline(
    app: &App,
    project_id: i64,
    timeline: &Timeline,
) -> Result<video::timeline::Timeline, PluginError> {
    use video::timeline::{Clip, Music, Segment, Time, TitleCard, Transition};
    if timeline.items.is_empty() {
        return Err(PluginError::InvalidInput(
            "the timeline has no items".into(),
        ));
    }
    let seconds = |ms: u32| Time::Seconds(f64::from(ms) / 1000.0);
    let mut segments = Vec::new();
    let mut transitions = Vec::new();
    for (index, item) in timeline.items.iter().enumerate() {
        let (segment, transition) = match item {
            TimelineItem::Clip(clip) => {
                let asset = StudioServices::project_asset(app, project_id, &clip.asset_id)?;
                if asset.kind != MediaKind::Video {
                    return Err(PluginError::InvalidInput(format!(
                        "timeline clip `{}` is not a video asset",
                        clip.asset_id
                    )));
                }
                let segment = Segment::Clip(Clip {
                    path: app.assets.file_of(&asset),
                    trim_in: Some(seconds(clip.trim_start_ms)),
                    trim_out: Some(seconds(clip.trim_start_ms.saturating_add(clip.duration_ms))),
                    // The plugin host checked it (a finite gain from 0 to 4), as the soundtrack's.
                    volume: clip.volume,
                });
                let duration = seconds(clip.transition_in.duration_ms);
                let transition = match clip.transition_in.kind {
                    TransitionKind::Cut => Transition::Cut,
                    TransitionKind::Crossfade => Transition::Crossfade { duration },
                    TransitionKind::FadeThroughBlack => Transition::FadeThroughBlack { duration },
                };
                (segment, transition)
            }
            TimelineItem::Title(title) => (
                Segment::Title(TitleCard {
                    text: title.text.clone(),
                    duration: seconds(title.duration_ms),
                    background: [0, 0, 0],
                    color: [255, 255, 255],
                }),
                Transition::Cut,
            ),
        };
        if index > 0 {
            transitions.push(transition);
        }
        segments.push(segment);
    }
    let music = match &timeline.soundtrack {
        Some(soundtrack) => {
            let asset = StudioServices::project_asset(app, project_id, &soundtrack.asset_id)?;
            // The engine mixes WAV; other audio formats are stored but not decoded.
            if asset.kind != MediaKind::Audio || asset.mime != "audio/x-wav" {
                return Err(PluginError::InvalidInput(format!(
                    "the soundtrack `{}` is not a WAV audio asset ({})",
                    soundtrack.asset_id, asset.mime
                )));
            }
            Some(Music {
                path: app.assets.file_of(&asset),
                volume: soundtrack.volume,
            })
        }
        None => None,
    };
    Ok(video::timeline::Timeline {
        width: timeline.width,
        height: timeline.height,
        fps: timeline.fps,
        segments,
        transitions,
        metadata: serde_json::Value::Null,
        music,
    })
}

#[async_trait]
impl HostServices for StudioServices {
    fn log(&self, plugin_id: &str, level: LogLevel, message: &str) {
        match level {
            LogLevel::Debug => tracing::debug!(plugin = plugin_id, job = ?self.job_id, "{message}"),
            LogLevel::Info => tracing::info!(plugin = plugin_id, job = ?self.job_id, "{message}"),
            LogLevel::Warn => tracing::warn!(plugin = plugin_id, job = ?self.job_id, "{message}"),
            LogLevel::Error => tracing::error!(plugin = plugin_id, job = ?self.job_id, "{message}"),
        }
    }

    fn progress(&self, _plugin_id: &str, done: u32, total: u32, message: &str) {
        let stage = if message.is_empty() {
            "plugin"
        } else {
            message
        };
        let _ = self.monitor.report(stage, done.into(), total.into());
    }

    fn audit(&self, entry: AuditEntry) {
        if let Err(e) =
            registry::record_audit(&self.app.db, &entry, self.job_id, Some(self.project_id))
        {
            tracing::error!(plugin = entry.plugin_id, "cannot write the audit log: {e}");
        }
    }

    async fn list_documents(&self) -> Result<Vec<String>, PluginError> {
        let project_id = self.project_id;
        self.blocking(move |app| {
            app.db
                .with(|c| {
                    let mut stmt = c.prepare(
                        "SELECT name FROM project_documents WHERE project_id = ?1 ORDER BY name",
                    )?;
                    Ok(stmt
                        .query_map([project_id], |r| r.get(0))?
                        .collect::<rusqlite::Result<_>>()?)
                })
                .map_err(failed)
        })
        .await
    }

    async fn read_document(&self, name: &str) -> Result<String, PluginError> {
        let (project_id, name) = (self.project_id, name.to_string());
        self.blocking(move |app| {
            app.db
                .with(|c| {
                    Ok(c.query_row(
                        "SELECT content FROM project_documents WHERE project_id = ?1 AND name = ?2",
                        params![project_id, name],
                        |r| r.get::<_, String>(0),
                    )
                    .optional()?)
                })
                .map_err(failed)?
                .ok_or_else(|| PluginError::NotFound(format!("document `{name}`")))
        })
        .await
    }

    async fn write_document(&self, name: &str, content: &str) -> Result<(), PluginError> {
        let (project_id, name, content) = (self.project_id, name.to_string(), content.to_string());
        self.blocking(move |app| write_document(app, project_id, &name, &content).map_err(failed))
            .await
    }

    async fn search_assets(&self, query: &str, limit: u32) -> Result<Vec<AssetInfo>, PluginError> {
        let (project_id, query) = (self.project_id, query.to_string());
        self.blocking(move |app| {
            let q = crate::assets::search::SearchQuery {
                text: query,
                project_id: Some(project_id),
                limit: limit as usize,
                ..Default::default()
            };
            let hits = app.assets.search(&app.db, &q).map_err(failed)?;
            Ok(hits.iter().map(|h| asset_info(&h.asset)).collect())
        })
        .await
    }

    async fn asset_info(&self, id: &str) -> Result<AssetInfo, PluginError> {
        let (project_id, id) = (self.project_id, id.to_string());
        self.blocking(move |app| Ok(asset_info(&Self::project_asset(app, project_id, &id)?)))
            .await
    }

    async fn read_asset(&self, id: &str, offset: u64, length: u32) -> Result<Vec<u8>, PluginError> {
        let (project_id, id) = (self.project_id, id.to_string());
        self.blocking(move |app| {
            let asset = Self::project_asset(app, project_id, &id)?;
            let mut file = std::fs::File::open(app.assets.file_of(&asset)).map_err(failed)?;
            file.seek(SeekFrom::Start(offset)).map_err(failed)?;
            let mut bytes = Vec::new();
            file.take(u64::from(length.min(MAX_READ)))
                .read_to_end(&mut bytes)
                .map_err(failed)?;
            Ok(bytes)
        })
        .await
    }

    async fn write_asset(
        &self,
        name: &str,
        _mime: &str,
        data: Vec<u8>,
        tags: Vec<String>,
    ) -> Result<AssetInfo, PluginError> {
        let (project_id, name) = (self.project_id, name.to_string());
        self.blocking(move |app| {
            let mut staged = app.assets.stage(None).map_err(failed)?;
            staged.write(&data).map_err(failed)?;
            let meta = NewAsset {
                name,
                project_id: Some(project_id),
                tags,
                ..Default::default()
            };
            // The content decides the kind; a declared MIME type is not trusted.
            let (asset, _) =
                app.assets
                    .import_staged(&app.db, staged, &meta)
                    .map_err(|e| match e {
                        StudioError::NotMedia(why) | StudioError::Invalid(why) => {
                            PluginError::InvalidInput(why)
                        }
                        other => failed(other),
                    })?;
            Ok(asset_info(&asset))
        })
        .await
    }

    async fn generate_image(
        &self,
        request: GenerationRequest,
        references: Vec<String>,
    ) -> Result<AssetInfo, PluginError> {
        let (project_id, job_id, monitor) = (self.project_id, self.job_id, self.monitor.clone());
        self.blocking(move |app| {
            let references = references
                .iter()
                .map(|id| {
                    let asset = Self::project_asset(app, project_id, id)?;
                    if asset.kind != MediaKind::Image {
                        return Err(PluginError::InvalidInput(format!(
                            "reference `{id}` is a {} asset, not an image",
                            asset.kind.as_str()
                        )));
                    }
                    Ok(asset.id)
                })
                .collect::<Result<Vec<_>, _>>()?;
            let project = crate::projects::get_project(&app.db, project_id).map_err(failed)?;
            let image = ImageRequest {
                project_id,
                shot_id: None,
                name: format!(
                    "{}-image-seed-{}.png",
                    crate::plugins::calls::file_stem(&project.name),
                    request.seed
                ),
                tags: vec!["generated".into()],
                prompt: request.prompt,
                negative_prompt: request.negative_prompt,
                seed: Some(request.seed),
                references,
                width: request.width as usize,
                height: request.height as usize,
                steps: request.steps.map(|s| s as usize),
                guidance: request.guidance,
                model: None,
                loras: crate::loras::for_project(app, project_id, LoraTarget::Image)
                    .map_err(failed)?,
            };
            let (output, ()) = app
                .generator
                .generate_image(
                    app,
                    job_id,
                    &image,
                    &mut |stage, step, total| monitor.report(stage, step, total),
                    |_, _, _| Ok(()),
                )
                .map_err(generation_error)?;
            Ok(asset_info(&output.asset))
        })
        .await
    }

    async fn generate_video(
        &self,
        request: GenerationRequest,
        start_frame: Option<String>,
    ) -> Result<AssetInfo, PluginError> {
        let frames = request.frames as usize;
        if frames == 0 {
            return Err(PluginError::InvalidInput(
                "frames must be at least 1".into(),
            ));
        }
        Ok(asset_info(
            &self.generate(request, frames, start_frame).await?,
        ))
    }

    async fn complete_text(&self, prompt: &str, max_tokens: u32) -> Result<String, PluginError> {
        let request = ChatRequest {
            messages: vec![user_turn(prompt, Vec::new())],
            options: ChatSettings {
                max_tokens,
                ..ChatSettings::default()
            },
        };
        Ok(self.ask(request).await?.text)
    }

    async fn chat(
        &self,
        messages: Vec<ChatMessage>,
        options: ChatOptions,
    ) -> Result<ChatReply, PluginError> {
        let json_schema = match &options.json_schema {
            Some(text) => Some(serde_json::from_str(text).map_err(|e| {
                PluginError::InvalidInput(format!("the JSON Schema is not JSON: {e}"))
            })?),
            None => None,
        };
        let project_id = self.project_id;
        let messages = self
            .blocking(move |app| {
                messages
                    .into_iter()
                    .map(|m| {
                        let images = m
                            .images
                            .iter()
                            .map(|id| Self::project_asset(app, project_id, id).map(|a| a.id))
                            .collect::<Result<_, _>>()?;
                        Ok(ChatTurn {
                            role: m.role,
                            text: m.text,
                            images,
                        })
                    })
                    .collect::<Result<Vec<_>, PluginError>>()
            })
            .await?;
        let request = ChatRequest {
            messages,
            options: ChatSettings {
                max_tokens: options.max_tokens,
                temperature: Some(options.temperature),
                seed: options.seed,
                stop: options.stop,
                json_schema,
            },
        };
        let answer = self.ask(request).await?;
        let count = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        Ok(ChatReply {
            text: answer.text,
            model: answer.model,
            prompt_tokens: count(answer.prompt_tokens),
            generated_tokens: count(answer.generated_tokens),
            finish: match answer.finish {
                Finish::EndOfTurn => FinishReason::EndOfTurn,
                Finish::MaxTokens => FinishReason::MaxTokens,
                Finish::StopString => FinishReason::StopString,
            },
        })
    }

    async fn describe(&self, asset_id: &str, question: &str) -> Result<String, PluginError> {
        let (project_id, id) = (self.project_id, asset_id.to_string());
        let asset = self
            .blocking(move |app| Self::project_asset(app, project_id, &id))
            .await?;
        if !matches!(asset.kind, MediaKind::Image | MediaKind::Video) {
            return Err(PluginError::InvalidInput(format!(
                "asset `{asset_id}` is audio: only images and videos can be described"
            )));
        }
        let request = ChatRequest {
            messages: vec![user_turn(question, vec![asset.id])],
            options: ChatSettings {
                max_tokens: DESCRIBE_TOKENS,
                ..ChatSettings::default()
            },
        };
        Ok(self.ask(request).await?.text)
    }

    async fn probe(&self, asset_id: &str) -> Result<ClipInfo, PluginError> {
        let (project_id, id) = (self.project_id, asset_id.to_string());
        self.blocking(move |app| {
            let asset = Self::project_asset(app, project_id, &id)?;
            if asset.kind != MediaKind::Video {
                return Err(PluginError::InvalidInput(format!(
                    "asset `{id}` is not a video"
                )));
            }
            let info = video::probe(&app.assets.file_of(&asset)).map_err(failed)?;
            Ok(clip_info(&info))
        })
        .await
    }

    async fn extract_frame(&self, asset_id: &str, index: u32) -> Result<AssetInfo, PluginError> {
        let (project_id, id) = (self.project_id, asset_id.to_string());
        self.blocking(move |app| {
            let asset = Self::project_asset(app, project_id, &id)?;
            if asset.kind != MediaKind::Video {
                return Err(PluginError::InvalidInput(format!(
                    "asset `{id}` is not a video"
                )));
            }
            let path = app.assets.file_of(&asset);
            let frames = video::probe(&path).map_err(failed)?.frames;
            if index as usize >= frames {
                return Err(PluginError::InvalidInput(format!(
                    "frame {index} is past the end of asset `{id}` ({frames} frames)"
                )));
            }
            let frame = video::extract_frame(&path, index as usize).map_err(failed)?;
            let out = scratch(app, "frame", "png")?;
            frame.save(&out).map_err(failed)?;
            let name = format!(
                "{}-frame-{index}.png",
                asset.original_name.trim_end_matches(".mp4")
            );
            Ok(asset_info(&import(
                app,
                project_id,
                &out,
                name,
                vec!["frame".into()],
            )?))
        })
        .await
    }

    async fn render_timeline(
        &self,
        timeline: Timeline,
        name: &str,
    ) -> Result<AssetInfo, PluginError> {
        let (project_id, monitor) = (self.project_id, self.monitor.clone());
        let name = if name.ends_with(".mp4") {
            name.to_string()
        } else {
            format!("{name}.mp4")
        };
        crate::assets::checked_file_name(&name)
            .map_err(|e| PluginError::InvalidInput(e.to_string()))?;
        self.blocking(move |app| {
            let mut edit = engine_timeline(app, project_id, &timeline)?;
            // The edit travels inside the file, as generations carry their parameters.
            edit.metadata = serde_json::json!({ "timeline": timeline });
            let out = scratch(app, "render", "mp4")?;
            video::timeline::render(&edit, &out, &mut |p| {
                monitor.report("rendering", p.frame as u64, p.total as u64)
            })
            .map_err(|e| {
                let _ = std::fs::remove_file(&out);
                if e.downcast_ref::<video::timeline::RenderCancelled>()
                    .is_some()
                {
                    PluginError::Cancelled
                } else {
                    PluginError::InvalidInput(format!("{e:#}"))
                }
            })?;
            Ok(asset_info(&import(
                app,
                project_id,
                &out,
                name,
                vec!["stitched".into()],
            )?))
        })
        .await
    }

    async fn upscale(
        &self,
        asset_id: &str,
        width: u32,
        height: u32,
    ) -> Result<AssetInfo, PluginError> {
        self.finish(asset_id, format!("{width}x{height}")).await
    }

    async fn interpolate(&self, asset_id: &str, fps: u32) -> Result<AssetInfo, PluginError> {
        self.finish(asset_id, format!("@{fps}")).await
    }
}

/// Creates or replaces a named document of a project.
pub fn write_document(
    app: &App,
    project_id: i64,
    name: &str,
    content: &str,
) -> crate::error::Result<()> {
    app.db.with(|c| {
        c.execute(
            "INSERT INTO project_documents (project_id, name, content, updated_at)
             VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (project_id, name) DO UPDATE SET content = ?3, updated_at = ?4",
            params![project_id, name, content, now_ms()],
        )?;
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{StudioConfig, projects};

    /// `media.upscale` and `media.interpolate` run `finish` jobs on the queue for assets of the
    /// bound project only, and say what to install when no model is there.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn upscale_and_interpolate_are_finish_jobs_of_the_bound_project() {
        let dir = tempfile::tempdir().unwrap();
        crate::generation::install_tiny_model(dir.path());
        let app = Arc::new(App::open(StudioConfig::new(dir.path())).unwrap());
        let mine = projects::create_project(&app.db, "mine").unwrap();
        let theirs = projects::create_project(&app.db, "theirs").unwrap();
        let services = StudioServices::new(app.clone(), mine.id, None, Arc::default());
        let workers = crate::jobs::JobQueue::start(&app, 1);
        let request = GenerationRequest {
            prompt: "a paper boat on a canal".into(),
            negative_prompt: String::new(),
            width: 32,
            height: 32,
            frames: 5,
            steps: Some(2),
            guidance: Some(1.0),
            seed: 7,
        };
        let video = services.generate_video(request, None).await.unwrap();
        assert!(matches!(
            services.upscale(&video.id, 64, 64).await,
            Err(PluginError::Failed(m)) if m == crate::finishing::NO_UPSCALER
        ));

        let finishing = crate::finishing::finishing_dir(dir.path());
        std::fs::create_dir_all(&finishing).unwrap();
        let fixtures =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/finishing");
        std::fs::copy(
            fixtures.join("upscalers/compact_x2/model.safetensors"),
            finishing.join("compact.safetensors"),
        )
        .unwrap();
        std::fs::copy(
            fixtures.join("rife/4.6/flownet.pkl"),
            finishing.join("flownet.pkl"),
        )
        .unwrap();
        let upscaled = services.upscale(&video.id, 64, 64).await.unwrap();
        let clip = services.probe(&upscaled.id).await.unwrap();
        assert_eq!((clip.width, clip.height, clip.frames), (64, 64, 5));
        let retimed = services.interpolate(&video.id, 32).await.unwrap();
        let clip = services.probe(&retimed.id).await.unwrap();
        assert_eq!(
            (clip.width, clip.height, clip.fps, clip.frames),
            (32, 32, 32, 9)
        );
        assert!(matches!(
            services.upscale(&video.id, 15360, 8640).await,
            Err(PluginError::InvalidInput(m)) if m.contains("3840x2160")
        ));
        let outsider = StudioServices::new(app.clone(), theirs.id, None, Arc::default());
        assert!(matches!(
            outsider.upscale(&video.id, 64, 64).await,
            Err(PluginError::NotFound(_))
        ));
        app.jobs.stop();
        for worker in workers {
            worker.await.unwrap();
        }
    }

    #[tokio::test]
    async fn generation_media_and_documents_stay_inside_the_bound_project() {
        let dir = tempfile::tempdir().unwrap();
        crate::generation::install_tiny_model(dir.path());
        crate::generation::install_fixture_model(dir.path(), "tiny-flux2-klein");
        let app = Arc::new(App::open(StudioConfig::new(dir.path())).unwrap());
        let mine = projects::create_project(&app.db, "mine").unwrap();
        let theirs = projects::create_project(&app.db, "theirs").unwrap();
        let services = StudioServices::new(app.clone(), mine.id, None, Arc::default());
        let request = GenerationRequest {
            prompt: "a paper boat on a canal".into(),
            negative_prompt: String::new(),
            width: 32,
            height: 32,
            frames: 5,
            steps: Some(2),
            guidance: Some(1.0),
            seed: 7,
        };

        let video = services
            .generate_video(request.clone(), None)
            .await
            .unwrap();
        assert_eq!(video.kind, AssetKind::Video);
        let clip = services.probe(&video.id).await.unwrap();
        assert_eq!((clip.width, clip.height, clip.frames), (32, 32, 5));
        let frame = services.extract_frame(&video.id, 4).await.unwrap();
        assert_eq!(
            (frame.kind, frame.mime.as_str()),
            (AssetKind::Image, "image/png")
        );
        assert!(matches!(
            services.extract_frame(&video.id, 5).await,
            Err(PluginError::InvalidInput(m)) if m.contains("past the end")
        ));
        let image = services
            .generate_image(request.clone(), Vec::new())
            .await
            .unwrap();
        assert_eq!(
            (image.kind, image.mime.as_str()),
            (AssetKind::Image, "image/png")
        );
        let bytes = services.read_asset(&image.id, 0, 8).await.unwrap();
        assert_eq!(bytes, b"\x89PNG\r\n\x1a\n");

        services.write_document("notes.md", "hello").await.unwrap();
        assert_eq!(services.read_document("notes.md").await.unwrap(), "hello");
        assert_eq!(services.list_documents().await.unwrap(), ["notes.md"]);

        let outsider = StudioServices::new(app.clone(), theirs.id, None, Arc::default());
        assert!(matches!(
            outsider.asset_info(&video.id).await,
            Err(PluginError::NotFound(_))
        ));
        assert!(matches!(
            outsider.read_document("notes.md").await,
            Err(PluginError::NotFound(_))
        ));
        assert!(matches!(
            outsider.generate_image(request, vec![image.id.clone()]).await,
            Err(PluginError::NotFound(m)) if m == format!("asset `{}`", image.id)
        ));
        assert!(matches!(
            services.complete_text("hello", 8).await,
            Err(PluginError::Failed(m)) if m.contains("no language model is installed; pull one with `videosdgx models pull Qwen/Qwen3-4B`")
        ));
    }
}
