//! Model management against the Hugging Face hub: pull a diffusers pipeline or a transformers
//! language model repository into `<models>/<repo-id>` and list what is installed.
//! Downloads go through `hf-hub` into `<models>/.hub-cache` (HF cache layout, so an interrupted
//! file resumes from its `.part` with an HTTP range request); the model directory is then
//! assembled from hard links to the cached blobs, so nothing is stored twice. A pulled
//! directory appears whole or not at all. This module never loads or checks tensors: that is
//! `loader::verify`; it reads only the JSON files that say what a folder is (and what a pipeline makes).

use crate::pipelines::{Capabilities, Pipeline};
use anyhow::{Context, Result, bail, ensure};
use hf_hub::api::Progress;
use hf_hub::api::sync::{ApiBuilder, ApiError};
use hf_hub::{Cache, Repo, RepoType};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";
/// Written into every pulled directory: where it came from.
pub const SOURCE_FILE: &str = ".videosdgx-source.json";
const CACHE_DIR: &str = ".hub-cache";
/// Weight formats the engine cannot load; skipped when the repository also has safetensors.
const UNUSED_WEIGHTS: &[&str] = &[
    ".bin", ".pt", ".pth", ".ckpt", ".msgpack", ".h5", ".onnx", ".gguf",
];

/// Where a model was pulled from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PullSource {
    pub repo_id: String,
    pub revision: String,
    pub commit: String,
    pub endpoint: String,
    pub files: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PullProgress<'a> {
    pub file: &'a str,
    /// 0-based index of `file` among `files`.
    pub file_index: usize,
    pub files: usize,
    pub bytes: u64,
    pub file_size: u64,
}

/// What an installed model directory holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelKind {
    /// A diffusers pipeline (`model_index.json`): video or image generation.
    Pipeline,
    /// A transformers language model whose `config.json` names an architecture of
    /// [`crate::text::model::Architecture`].
    Language,
    /// Pulled, but neither of the above.
    Other,
}

/// An installed model directory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LocalModel {
    /// `org/name` relative to the models directory.
    pub name: String,
    pub path: PathBuf,
    pub size_bytes: u64,
    pub kind: ModelKind,
    /// For language models, the architecture `config.json` names, e.g. `Qwen3ForCausalLM`.
    pub architecture: Option<String>,
    /// `_class_name` of `model_index.json`, e.g. `WanPipeline`.
    pub pipeline_class: Option<String>,
    /// Component folder -> class, from `model_index.json`.
    pub components: BTreeMap<String, String>,
    /// For pipelines the engine runs, what they make and take ([`Pipeline::inspect`]); `None`
    /// for other kinds and for pipelines it cannot run.
    pub capabilities: Option<Capabilities>,
    pub source: Option<PullSource>,
}

/// A hub endpoint and credentials.
#[derive(Debug, Clone)]
pub struct Hub {
    endpoint: String,
    token: Option<String>,
}

impl Hub {
    pub fn new(endpoint: impl Into<String>) -> Self {
        Self {
            endpoint: endpoint.into().trim_end_matches('/').to_string(),
            token: None,
        }
    }

    /// `HF_ENDPOINT` (default huggingface.co) and `HF_TOKEN`, as the Python tools read them.
    pub fn from_env() -> Self {
        let endpoint =
            std::env::var("HF_ENDPOINT").unwrap_or_else(|_| DEFAULT_ENDPOINT.to_string());
        Self::new(endpoint).with_token(std::env::var("HF_TOKEN").ok().filter(|t| !t.is_empty()))
    }

    pub fn with_token(mut self, token: Option<String>) -> Self {
        self.token = token;
        self
    }

    /// Downloads `repo_id` at `revision` (default `main`) into `<models_dir>/<repo_id>` and returns
    /// that directory. Files already in the cache are not fetched again; a partially downloaded
    /// file resumes where it stopped.
    pub fn pull(
        &self,
        repo_id: &str,
        revision: Option<&str>,
        models_dir: &Path,
        progress: &mut dyn FnMut(&PullProgress),
    ) -> Result<PathBuf> {
        check_repo_id(repo_id)?;
        let revision = revision.unwrap_or("main");
        let cache_dir = models_dir.join(CACHE_DIR);
        let (api, info) = self.repo_info(&cache_dir, repo_id, revision)?;
        let files = select_files(info.siblings.iter().map(|s| s.rfilename.as_str()))?;
        ensure!(
            !files.is_empty(),
            "model repo {repo_id} at {revision} has no files"
        );
        // Pin the commit so every file comes from the same snapshot even if the branch moves.
        let pinned = Repo::with_revision(repo_id.to_string(), RepoType::Model, info.sha.clone());
        let api_repo = api.repo(pinned.clone());
        let cache = Cache::new(cache_dir).repo(pinned);
        let mut local = Vec::with_capacity(files.len());
        for (file_index, file) in files.iter().enumerate() {
            let path = match cache.get(file) {
                Some(path) => path,
                None => {
                    let adapter = ProgressAdapter {
                        file,
                        file_index,
                        files: files.len(),
                        bytes: 0,
                        file_size: 0,
                        callback: &mut *progress,
                    };
                    api_repo
                        .download_with_progress(file, adapter)
                        .map_err(|err| self.explain(err, repo_id, revision, Some(file)))?
                }
            };
            let blob = std::fs::canonicalize(&path)
                .with_context(|| format!("resolving {}", path.display()))?;
            check_blob(&blob, file)?;
            local.push(blob);
        }
        let source = PullSource {
            repo_id: repo_id.to_string(),
            revision: revision.to_string(),
            commit: info.sha,
            endpoint: self.endpoint.clone(),
            files: files.clone(),
        };
        install(models_dir, &source, &local)
    }

    /// A client over the hub cache in `cache_dir` and what the hub says of `repo_id` at
    /// `revision` (its files and the commit the revision names).
    fn repo_info(
        &self,
        cache_dir: &Path,
        repo_id: &str,
        revision: &str,
    ) -> Result<(hf_hub::api::sync::Api, hf_hub::api::RepoInfo)> {
        let api = self.api(cache_dir)?;
        let info = api
            .repo(Repo::with_revision(
                repo_id.to_string(),
                RepoType::Model,
                revision.to_string(),
            ))
            .info()
            .map_err(|err| self.explain(err, repo_id, revision, None))?;
        Ok((api, info))
    }

    fn api(&self, cache_dir: &Path) -> Result<hf_hub::api::sync::Api> {
        std::fs::create_dir_all(cache_dir)
            .with_context(|| format!("creating {}", cache_dir.display()))?;
        ApiBuilder::from_cache(Cache::new(cache_dir.to_path_buf()))
            .with_endpoint(self.endpoint.clone())
            .with_token(self.token.clone())
            .with_progress(false)
            .build()
            .context("setting up the hub client")
    }

    /// Downloads one file of `repo_id` at `revision` (default `main`) into the hub cache of
    /// `models_dir` (shared with [`Hub::pull`], so it resumes and is not fetched twice) and
    /// returns the cached file and where it came from. For single files users pull on their own,
    /// such as a LoRA; the caller copies it where it belongs.
    pub fn pull_file(
        &self,
        repo_id: &str,
        revision: Option<&str>,
        file: &str,
        models_dir: &Path,
        progress: &mut dyn FnMut(&PullProgress),
    ) -> Result<(PathBuf, PullSource)> {
        check_repo_id(repo_id)?;
        select_files(std::iter::once(file))?;
        let revision = revision.unwrap_or("main");
        let cache_dir = models_dir.join(CACHE_DIR);
        let (api, info) = self.repo_info(&cache_dir, repo_id, revision)?;
        ensure!(
            info.siblings.iter().any(|s| s.rfilename == file),
            "model repo {repo_id} at {revision} has no file {file}"
        );
        let pinned = Repo::with_revision(repo_id.to_string(), RepoType::Model, info.sha.clone());
        let path = match Cache::new(cache_dir).repo(pinned.clone()).get(file) {
            Some(path) => path,
            None => {
                let adapter = ProgressAdapter {
                    file,
                    file_index: 0,
                    files: 1,
                    bytes: 0,
                    file_size: 0,
                    callback: &mut *progress,
                };
                api.repo(pinned)
                    .download_with_progress(file, adapter)
                    .map_err(|err| self.explain(err, repo_id, revision, Some(file)))?
            }
        };
        let blob = std::fs::canonicalize(&path)
            .with_context(|| format!("resolving {}", path.display()))?;
        check_blob(&blob, file)?;
        let source = PullSource {
            repo_id: repo_id.to_string(),
            revision: revision.to_string(),
            commit: info.sha,
            endpoint: self.endpoint.clone(),
            files: vec![file.to_string()],
        };
        Ok((blob, source))
    }

    fn explain(
        &self,
        err: ApiError,
        repo_id: &str,
        revision: &str,
        file: Option<&str>,
    ) -> anyhow::Error {
        let status = match &err {
            ApiError::RequestError(inner) => match inner.as_ref() {
                ureq::Error::Status(code, response) => {
                    Some((*code, response.header("x-error-code").map(str::to_string)))
                }
                ureq::Error::Transport(_) => None,
            },
            _ => None,
        };
        let what = match file {
            Some(file) => format!("file {file} of model repo {repo_id} (revision {revision})"),
            None => format!("model repo {repo_id} (revision {revision})"),
        };
        match status {
            Some((404 | 401, code)) => anyhow::anyhow!(
                "{what} not found on {} ({}){}",
                self.endpoint,
                code.unwrap_or_else(|| "HTTP 404".into()),
                if self.token.is_none() {
                    "; for a gated or private repo set HF_TOKEN"
                } else {
                    ""
                }
            ),
            Some((code, _)) => {
                anyhow::anyhow!("{what}: the hub at {} answered HTTP {code}", self.endpoint)
            }
            None => anyhow::Error::new(err)
                .context(format!("downloading {what} from {}", self.endpoint)),
        }
    }
}

/// [`Hub::pull`] with the endpoint and token from the environment.
pub fn pull(
    repo_id: &str,
    revision: Option<&str>,
    models_dir: &Path,
    progress: &mut dyn FnMut(&PullProgress),
) -> Result<PathBuf> {
    Hub::from_env().pull(repo_id, revision, models_dir, progress)
}

struct ProgressAdapter<'a> {
    file: &'a str,
    file_index: usize,
    files: usize,
    bytes: u64,
    file_size: u64,
    callback: &'a mut dyn FnMut(&PullProgress),
}

impl Progress for ProgressAdapter<'_> {
    fn init(&mut self, size: usize, _filename: &str) {
        self.file_size = size as u64;
        self.bytes = 0;
    }

    fn update(&mut self, size: usize) {
        self.bytes += size as u64;
        (self.callback)(&PullProgress {
            file: self.file,
            file_index: self.file_index,
            files: self.files,
            bytes: self.bytes,
            file_size: self.file_size,
        });
    }

    fn finish(&mut self) {}
}

/// `org/name` or `name` made of the characters the hub allows; never a path that escapes.
fn check_repo_id(repo_id: &str) -> Result<()> {
    let parts: Vec<&str> = repo_id.split('/').collect();
    let valid_part = |p: &str| {
        !p.is_empty()
            && !p.starts_with(['.', '-'])
            && p.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    };
    ensure!(
        (1..=2).contains(&parts.len())
            && parts.iter().all(|p| valid_part(p))
            && !repo_id.contains(".."),
        "invalid repo id {repo_id:?}: expected NAME or ORG/NAME (letters, digits, '-', '_', '.')"
    );
    Ok(())
}

/// Everything but weight formats the engine cannot read (when safetensors exist) and git files.
fn select_files<'a>(names: impl Iterator<Item = &'a str>) -> Result<Vec<String>> {
    let names: Vec<&str> = names.collect();
    for name in &names {
        let path = Path::new(name);
        ensure!(
            path.components().all(|c| matches!(c, Component::Normal(_))),
            "the hub listed an unsafe file name {name:?}"
        );
    }
    let has_safetensors = names.iter().any(|n| n.ends_with(".safetensors"));
    Ok(names
        .into_iter()
        .filter(|n| !n.starts_with(".git"))
        .filter(|n| !(has_safetensors && UNUSED_WEIGHTS.iter().any(|ext| n.ends_with(ext))))
        .map(str::to_string)
        .collect())
}

/// The cache names a blob by its ETag; for LFS files that is the SHA-256 of the content, which
/// catches a corrupted resume.
fn check_blob(blob: &Path, file: &str) -> Result<()> {
    let etag = blob
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    if etag.len() != 64 || !etag.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Ok(());
    }
    let mut hasher = Sha256::new();
    let mut reader =
        std::fs::File::open(blob).with_context(|| format!("opening {}", blob.display()))?;
    std::io::copy(&mut reader, &mut hasher)
        .with_context(|| format!("reading {}", blob.display()))?;
    let actual = format!("{:x}", hasher.finalize());
    if !actual.eq_ignore_ascii_case(etag) {
        // Drop the bad blob so the next pull downloads it again.
        let _ = std::fs::remove_file(blob);
        bail!(
            "downloaded {file} is corrupt: SHA-256 {actual}, the hub announced {etag}; pull again"
        );
    }
    Ok(())
}

/// Assembles the model directory beside its final place, then swaps it in.
fn install(models_dir: &Path, source: &PullSource, blobs: &[PathBuf]) -> Result<PathBuf> {
    let flat_name = source.repo_id.replace('/', "--");
    let staging = models_dir.join(format!(".staging-{flat_name}"));
    if staging.exists() {
        std::fs::remove_dir_all(&staging)
            .with_context(|| format!("clearing {}", staging.display()))?;
    }
    for (file, blob) in source.files.iter().zip(blobs) {
        let target = staging.join(file);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        if std::fs::hard_link(blob, &target).is_err() {
            std::fs::copy(blob, &target)
                .with_context(|| format!("copying {file} into {}", staging.display()))?;
        }
    }
    std::fs::write(
        staging.join(SOURCE_FILE),
        serde_json::to_vec_pretty(source)?,
    )?;
    let destination = models_dir.join(&source.repo_id);
    if let Some(parent) = destination.parent() {
        std::fs::create_dir_all(parent)?;
    }
    if destination.exists() {
        let old = models_dir.join(format!(".replaced-{flat_name}"));
        let _ = std::fs::remove_dir_all(&old);
        std::fs::rename(&destination, &old)
            .with_context(|| format!("moving aside {}", destination.display()))?;
        std::fs::rename(&staging, &destination)?;
        std::fs::remove_dir_all(&old).with_context(|| format!("removing {}", old.display()))?;
    } else {
        std::fs::rename(&staging, &destination)
            .with_context(|| format!("moving the model into {}", destination.display()))?;
    }
    Ok(destination)
}

/// Model directories under `models_dir` (`name/` or `org/name/` holding `model_index.json`, a
/// language model's `config.json` or a pull record), sorted by name.
pub fn list(models_dir: &Path) -> Result<Vec<LocalModel>> {
    let mut models = Vec::new();
    if !models_dir.exists() {
        return Ok(models);
    }
    for entry in visible_dirs(models_dir)? {
        if is_model_dir(&entry) {
            models.push(describe_model(models_dir, &entry)?);
        } else {
            for nested in visible_dirs(&entry)? {
                if is_model_dir(&nested) {
                    models.push(describe_model(models_dir, &nested)?);
                }
            }
        }
    }
    models.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(models)
}

fn visible_dirs(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut dirs = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let entry = entry?;
        if entry.file_type()?.is_dir() && !entry.file_name().to_string_lossy().starts_with('.') {
            dirs.push(entry.path());
        }
    }
    Ok(dirs)
}

fn is_model_dir(dir: &Path) -> bool {
    dir.join("model_index.json").is_file()
        || dir.join(SOURCE_FILE).is_file()
        || language_architecture(dir).is_some()
}

/// The first of `config.json`'s `architectures` when it is a language model the engine runs.
/// A missing or malformed `config.json` makes a folder no language model (not an error: a
/// pipeline's folder or a stray one may have any `config.json`).
fn language_architecture(dir: &Path) -> Option<String> {
    let text = std::fs::read_to_string(dir.join("config.json")).ok()?;
    let config: serde_json::Value = serde_json::from_str(&text).ok()?;
    let name = config.get("architectures")?.get(0)?.as_str()?;
    crate::text::model::Architecture::from_name(name).map(|a| a.name().to_string())
}

fn describe_model(models_dir: &Path, dir: &Path) -> Result<LocalModel> {
    let name = dir
        .strip_prefix(models_dir)
        .unwrap_or(dir)
        .to_string_lossy()
        .replace('\\', "/");
    let mut pipeline_class = None;
    let mut components = BTreeMap::new();
    let index_path = dir.join("model_index.json");
    if index_path.is_file() {
        let text = std::fs::read_to_string(&index_path)
            .with_context(|| format!("reading {}", index_path.display()))?;
        let index: serde_json::Value = serde_json::from_str(&text)
            .with_context(|| format!("{} is not valid JSON", index_path.display()))?;
        pipeline_class = index
            .get("_class_name")
            .and_then(|v| v.as_str())
            .map(str::to_string);
        if let Some(entries) = index.as_object() {
            for (key, value) in entries {
                // Components are `"name": ["library", "Class"]`; `null` marks an absent optional one.
                if let Some(class) = value
                    .as_array()
                    .and_then(|pair| pair.get(1))
                    .and_then(|c| c.as_str())
                {
                    components.insert(key.clone(), class.to_string());
                }
            }
        }
    }
    let source_path = dir.join(SOURCE_FILE);
    let source = if source_path.is_file() {
        let text = std::fs::read_to_string(&source_path)?;
        Some(
            serde_json::from_str(&text)
                .with_context(|| format!("{} is malformed", source_path.display()))?,
        )
    } else {
        None
    };
    let architecture = language_architecture(dir);
    let kind = if index_path.is_file() {
        ModelKind::Pipeline
    } else if architecture.is_some() {
        ModelKind::Language
    } else {
        ModelKind::Other
    };
    Ok(LocalModel {
        name,
        path: dir.to_path_buf(),
        size_bytes: dir_size(dir)?,
        kind,
        architecture,
        pipeline_class,
        components,
        capabilities: match kind {
            ModelKind::Pipeline => Pipeline::inspect(dir).ok(),
            _ => None,
        },
        source,
    })
}

fn dir_size(dir: &Path) -> Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let entry = entry?;
        let metadata = std::fs::metadata(entry.path())?;
        total += if metadata.is_dir() {
            dir_size(&entry.path())?
        } else {
            metadata.len()
        };
    }
    Ok(total)
}
