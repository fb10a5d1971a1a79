//! The studio's installed models, read-only, in the two calls of the Hugging Face hub's API that
//! `models pull` makes (`GET {endpoint}/api/models/{repo}/revision/{rev}`, the file list and
//! commit; `GET {endpoint}/{repo}/resolve/{rev}/{file}` with `Range`), under `/api/hub`: a
//! worker pulls a model it lacks from the studio with the same code that pulls from the hub
//! (`videosdgx_engine::hub::Hub` with endpoint `URL/api/hub` and the access token), so a pull
//! resumes, is checked against each file's SHA-256 (sent as the `ETag`) and installs whole.
//! Only the files of an installed model's folder are served: a path is looked up in that list,
//! never joined onto a folder, and `..` or any other non-plain component is refused.

use super::assets::conditional_refusal;
use super::error::{ApiError, ApiResult, Path};
use crate::app::App;
use crate::error::{Result, StudioError};
use crate::models;
use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::SystemTime;

pub fn routes() -> Router<Arc<App>> {
    Router::new().route("/api/hub/{*rest}", get(hub))
}

/// One file of an installed model.
struct ModelFile {
    /// Relative to the model's folder, `/`-separated.
    name: String,
    path: PathBuf,
    size: u64,
    modified: SystemTime,
}

/// An installed model's files (hidden ones, such as the pull record, left out) and a commit id
/// that changes whenever one of them does.
fn model_files(app: &App, repo: &str) -> Result<(Vec<ModelFile>, String)> {
    let installed = models::list_models(app.data_dir())?;
    let model = installed
        .iter()
        .find(|m| m.name == repo)
        .ok_or_else(|| StudioError::NotFound {
            what: "model",
            id: format!("`{repo}` (not installed in the studio)"),
        })?;
    let mut files = Vec::new();
    let mut folders = vec![model.path.clone()];
    while let Some(folder) = folders.pop() {
        for entry in std::fs::read_dir(&folder)? {
            let entry = entry?;
            let name = entry.file_name();
            if name.to_string_lossy().starts_with('.') {
                continue;
            }
            let meta = std::fs::metadata(entry.path())?;
            if meta.is_dir() {
                folders.push(entry.path());
            } else if meta.is_file() {
                let relative = entry
                    .path()
                    .strip_prefix(&model.path)
                    .map_err(anyhow::Error::from)?
                    .to_string_lossy()
                    .replace('\\', "/");
                files.push(ModelFile {
                    name: relative,
                    path: entry.path(),
                    size: meta.len(),
                    modified: meta.modified()?,
                });
            }
        }
    }
    files.sort_by(|a, b| a.name.cmp(&b.name));
    let mut commit = Sha256::new();
    for file in &files {
        let modified = file
            .modified
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        commit.update(format!(
            "{}\0{}\0{}\n",
            file.name,
            file.size,
            modified.as_nanos()
        ));
    }
    Ok((files, hex::encode(commit.finalize())[..40].to_string()))
}

/// A file's SHA-256, computed once per content (size and modification time) in this process.
fn sha256_of(file: &ModelFile) -> Result<String> {
    type Known = HashMap<PathBuf, (u64, SystemTime, String)>;
    static KNOWN: OnceLock<Mutex<Known>> = OnceLock::new();
    let known = KNOWN.get_or_init(Default::default);
    if let Some((size, modified, digest)) = known
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(&file.path)
        && *size == file.size
        && *modified == file.modified
    {
        return Ok(digest.clone());
    }
    let mut hasher = Sha256::new();
    std::io::copy(&mut std::fs::File::open(&file.path)?, &mut hasher)?;
    let digest = hex::encode(hasher.finalize());
    known.lock().unwrap_or_else(|p| p.into_inner()).insert(
        file.path.clone(),
        (file.size, file.modified, digest.clone()),
    );
    Ok(digest)
}

/// What a `/api/hub/...` path asks for.
#[derive(Debug, PartialEq)]
enum HubCall {
    /// `api/models/{repo}/revision/{rev}`.
    Info { repo: String },
    /// `{repo}/resolve/{rev}/{file}`.
    Resolve { repo: String, file: String },
}

fn parse(rest: &str) -> std::result::Result<HubCall, ApiError> {
    let bad = |why: &str| ApiError::new(StatusCode::BAD_REQUEST, "bad_path", why.to_string());
    let parts: Vec<&str> = rest.split('/').collect();
    if parts
        .iter()
        .any(|p| p.is_empty() || *p == "." || *p == ".." || p.contains('\\'))
    {
        return Err(bad(
            "a model path is plain names separated by `/`: no `..`, `.` or empty parts",
        ));
    }
    // A model's name is `name` or `org/name`.
    if let ["api", "models", repo @ .., "revision", _] = parts.as_slice()
        && (1..=2).contains(&repo.len())
    {
        return Ok(HubCall::Info {
            repo: repo.join("/"),
        });
    }
    for repo_len in 1..=2 {
        if parts.len() > repo_len + 2 && parts[repo_len] == "resolve" {
            return Ok(HubCall::Resolve {
                repo: parts[..repo_len].join("/"),
                file: parts[repo_len + 2..].join("/"),
            });
        }
    }
    Err(ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        "the studio's hub answers `api/models/{model}/revision/{rev}` and \
         `{model}/resolve/{rev}/{file}`",
    ))
}

/// An installed model's file list (`api/models/{model}/revision/{rev}`, as the hub's) or one of
/// its files (`{model}/resolve/{rev}/{file}`, with `Range`, `ETag` = its SHA-256, and
/// `X-Repo-Commit`). What a worker pulls models it lacks from.
#[utoipa::path(get, path = "/api/hub/{path}", tag = "workers",
    params(("path" = String, Path, description = "`api/models/{model}/revision/{rev}` or \
        `{model}/resolve/{rev}/{file}`")),
    responses((status = 200, description = "the file list, or the whole file"),
        (status = 206, description = "the requested range"),
        (status = 400, body = super::error::ErrorBody, description = "`..` or another \
            non-plain path component"),
        (status = 404, body = super::error::ErrorBody)))]
pub async fn hub(
    State(app): State<Arc<App>>,
    Path(rest): Path<String>,
    request: Request,
) -> ApiResult<Response> {
    match parse(&rest)? {
        HubCall::Info { repo } => {
            let (files, commit) = {
                let repo = repo.clone();
                app.blocking(move |a| model_files(a, &repo)).await?
            };
            let siblings: Vec<_> = files
                .iter()
                .map(|f| serde_json::json!({ "rfilename": f.name }))
                .collect();
            Ok(
                axum::Json(serde_json::json!({ "id": repo, "sha": commit, "siblings": siblings }))
                    .into_response(),
            )
        }
        HubCall::Resolve { repo, file } => {
            let (found, commit, sha256) = app
                .blocking(move |a| {
                    let (files, commit) = model_files(a, &repo)?;
                    let found = files.into_iter().find(|f| f.name == file).ok_or_else(|| {
                        StudioError::NotFound {
                            what: "file",
                            id: format!("{file} of model `{repo}`"),
                        }
                    })?;
                    let sha256 = sha256_of(&found)?;
                    Ok((found, commit, sha256))
                })
                .await?;
            let served = tower_http::services::ServeFile::new(&found.path)
                .try_call(request)
                .await
                .map_err(StudioError::from)?;
            let mut response = served.map(Body::new).into_response();
            if let Some(refusal) = conditional_refusal(&response, found.size) {
                return Ok(refusal);
            }
            let etag = HeaderValue::from_str(&format!("\"{sha256}\"")).expect("hex is a header");
            let headers = response.headers_mut();
            headers.insert("etag", etag.clone());
            // What the hub sends for large (LFS) files: the content's SHA-256, which the pull
            // checks the downloaded file against.
            headers.insert("x-linked-etag", etag);
            headers.insert("x-linked-size", HeaderValue::from(found.size));
            headers.insert(
                "x-repo-commit",
                HeaderValue::from_str(&commit).expect("hex is a header"),
            );
            Ok(response)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_paths_name_a_model_and_a_plain_file() {
        assert_eq!(
            parse("api/models/acme/tiny/revision/main").unwrap(),
            HubCall::Info {
                repo: "acme/tiny".into()
            }
        );
        assert_eq!(
            parse("tiny/resolve/main/transformer/config.json").unwrap(),
            HubCall::Resolve {
                repo: "tiny".into(),
                file: "transformer/config.json".into()
            }
        );
        assert_eq!(
            parse("acme/tiny/resolve/0123/model_index.json").unwrap(),
            HubCall::Resolve {
                repo: "acme/tiny".into(),
                file: "model_index.json".into()
            }
        );
        for escape in [
            "tiny/resolve/main/../../studio.db",
            "tiny/resolve/main/./config.json",
            "tiny/resolve/main//etc/passwd",
            "../tiny/resolve/main/config.json",
            "tiny/resolve/main/..\\studio.db",
        ] {
            assert_eq!(parse(escape).unwrap_err().code, "bad_path", "{escape}");
        }
        assert_eq!(parse("tiny/tree/main").unwrap_err().code, "not_found");
    }
}
