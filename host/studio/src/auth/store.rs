//! Persistent credentials for remote access, under `<data>/auth/`: the access token's SHA-256
//! (the token itself is shown once and never stored) and the browser sessions created from it
//! (stored as SHA-256 of the cookie value with their CSRF token and expiry). Sessions survive a
//! server restart so a creator is not logged out by an upgrade. Never holds a plain secret.

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use subtle::ConstantTimeEq;

/// Prefix of every access token, so a leaked one is recognisable in logs and scanners.
pub const TOKEN_PREFIX: &str = "vdgx_";
/// How long a browser session stays valid after sign-in.
pub const SESSION_LIFETIME: Duration = Duration::from_secs(30 * 24 * 3600);

#[derive(Serialize, Deserialize)]
struct TokenFile {
    token_sha256: String,
    created_at: u64,
}

#[derive(Serialize, Deserialize, Clone)]
struct SessionRecord {
    csrf_token: String,
    expires_at: u64,
}

#[derive(Serialize, Deserialize, Default)]
struct SessionsFile {
    /// Keyed by hex SHA-256 of the cookie value.
    sessions: HashMap<String, SessionRecord>,
}

/// A session a browser holds: the cookie value (secret) and the CSRF token the page sends back.
pub struct NewSession {
    pub cookie_value: String,
    pub csrf_token: String,
}

pub struct CredentialStore {
    dir: PathBuf,
    token_sha256: Mutex<Option<[u8; 32]>>,
    sessions: Mutex<SessionsFile>,
}

impl CredentialStore {
    /// Opens (creating the folder if needed) the store under `data_dir/auth`.
    pub fn open(data_dir: &Path) -> Result<Self> {
        let dir = data_dir.join("auth");
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create auth folder {}", dir.display()))?;
        let token_sha256 = match read_json::<TokenFile>(&dir.join("token.json"))? {
            Some(file) => Some(
                parse_digest(&file.token_sha256)
                    .with_context(|| format!("{} is corrupt", dir.join("token.json").display()))?,
            ),
            None => None,
        };
        let mut sessions =
            read_json::<SessionsFile>(&dir.join("sessions.json"))?.unwrap_or_default();
        let now = unix_now();
        sessions.sessions.retain(|_, s| s.expires_at > now);
        Ok(Self {
            dir,
            token_sha256: Mutex::new(token_sha256),
            sessions: Mutex::new(sessions),
        })
    }

    pub fn has_token(&self) -> bool {
        self.token_sha256.lock().unwrap().is_some()
    }

    /// Creates a fresh access token, replacing any previous one and ending every session
    /// created from it. Returns the token: the only time it exists outside the user's hands.
    pub fn create_token(&self) -> Result<String> {
        let token = format!("{TOKEN_PREFIX}{}", hex::encode(random_bytes()?));
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        write_json(
            &self.dir.join("token.json"),
            &TokenFile {
                token_sha256: hex::encode(digest),
                created_at: unix_now(),
            },
        )?;
        *self.token_sha256.lock().unwrap() = Some(digest);
        let mut sessions = self.sessions.lock().unwrap();
        sessions.sessions.clear();
        write_json(&self.dir.join("sessions.json"), &*sessions)?;
        Ok(token)
    }

    /// Whether `candidate` is the current access token (constant-time on the digests).
    pub fn verify_token(&self, candidate: &str) -> bool {
        let Some(stored) = *self.token_sha256.lock().unwrap() else {
            return false;
        };
        let digest: [u8; 32] = Sha256::digest(candidate.trim().as_bytes()).into();
        digest[..].ct_eq(&stored[..]).into()
    }

    pub fn create_session(&self) -> Result<NewSession> {
        let cookie_value = hex::encode(random_bytes()?);
        let csrf_token = hex::encode(random_bytes()?);
        let now = unix_now();
        let mut sessions = self.sessions.lock().unwrap();
        sessions.sessions.retain(|_, s| s.expires_at > now);
        sessions.sessions.insert(
            session_key(&cookie_value),
            SessionRecord {
                csrf_token: csrf_token.clone(),
                expires_at: now + SESSION_LIFETIME.as_secs(),
            },
        );
        write_json(&self.dir.join("sessions.json"), &*sessions)?;
        Ok(NewSession {
            cookie_value,
            csrf_token,
        })
    }

    /// The CSRF token of the live session identified by `cookie_value`, if any.
    pub fn session_csrf(&self, cookie_value: &str) -> Option<String> {
        let sessions = self.sessions.lock().unwrap();
        sessions
            .sessions
            .get(&session_key(cookie_value))
            .filter(|s| s.expires_at > unix_now())
            .map(|s| s.csrf_token.clone())
    }

    pub fn end_session(&self, cookie_value: &str) -> Result<()> {
        let mut sessions = self.sessions.lock().unwrap();
        if sessions
            .sessions
            .remove(&session_key(cookie_value))
            .is_some()
        {
            write_json(&self.dir.join("sessions.json"), &*sessions)?;
        }
        Ok(())
    }
}

fn session_key(cookie_value: &str) -> String {
    hex::encode(Sha256::digest(cookie_value.as_bytes()))
}

fn random_bytes() -> Result<[u8; 32]> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("no OS randomness: {e}"))?;
    Ok(bytes)
}

fn parse_digest(hex_digest: &str) -> Result<[u8; 32]> {
    let bytes = hex::decode(hex_digest).context("token digest is not hex")?;
    bytes
        .try_into()
        .map_err(|_| anyhow::anyhow!("token digest is not 32 bytes"))
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<Option<T>> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .with_context(|| format!("{} is not valid JSON", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// Writes through a temporary file and a rename so a crash never leaves half a file.
fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let tmp = path.with_extension("json.tmp");
    let bytes = serde_json::to_vec_pretty(value)?;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options
        .open(&tmp)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    std::io::Write::write_all(&mut file, &bytes)
        .and_then(|()| file.sync_all())
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot replace {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_is_stored_only_as_a_digest_and_verifies() {
        let dir = tempfile::tempdir().unwrap();
        let store = CredentialStore::open(dir.path()).unwrap();
        assert!(!store.has_token());
        let token = store.create_token().unwrap();
        assert!(token.starts_with(TOKEN_PREFIX) && token.len() == TOKEN_PREFIX.len() + 64);
        let on_disk = std::fs::read_to_string(dir.path().join("auth/token.json")).unwrap();
        assert!(!on_disk.contains(&token[TOKEN_PREFIX.len()..]));
        assert!(store.verify_token(&token));
        assert!(!store.verify_token("vdgx_wrong"));
        let reopened = CredentialStore::open(dir.path()).unwrap();
        assert!(reopened.verify_token(&token));
    }

    #[test]
    fn sessions_survive_reopen_and_end_when_the_token_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let store = CredentialStore::open(dir.path()).unwrap();
        store.create_token().unwrap();
        let session = store.create_session().unwrap();
        let reopened = CredentialStore::open(dir.path()).unwrap();
        assert_eq!(
            reopened.session_csrf(&session.cookie_value),
            Some(session.csrf_token.clone())
        );
        reopened.create_token().unwrap();
        assert_eq!(reopened.session_csrf(&session.cookie_value), None);
    }

    #[test]
    fn corrupt_token_file_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("auth")).unwrap();
        std::fs::write(dir.path().join("auth/token.json"), "{not json").unwrap();
        let err = CredentialStore::open(dir.path()).err().unwrap();
        assert!(format!("{err:#}").contains("token.json is not valid JSON"));
    }
}
