//! The one error type of the studio service. Every failure a caller can act on has a variant with a
//! stable code; the HTTP layer maps variants to statuses and the CLI prints the message.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum StudioError {
    /// The request is well formed but names something that does not exist.
    #[error("{what} {id} not found")]
    NotFound { what: &'static str, id: String },
    /// A value is out of range, inconsistent or otherwise refused.
    #[error("{0}")]
    Invalid(String),
    /// Work that the model or the studio's cards can never run as asked (a split the model's
    /// heads or guidance cannot take, more cards than the studio has): every attempt would be
    /// refused alike, so the job queue does not retry it.
    #[error("{0}")]
    Refused(String),
    /// An uploaded or imported file is not an image, video, audio or LoRA file we accept.
    #[error("{0}")]
    NotMedia(String),
    /// An upload is larger than the configured limit.
    #[error("upload exceeds the limit of {limit} bytes")]
    TooLarge { limit: u64 },
    /// The disk (or a file size limit) refused a write.
    #[error("storage is full: {0}")]
    StorageFull(String),
    /// Another connection holds a lock on the database for longer than the busy timeout.
    #[error("the database is locked by another process; try again")]
    DatabaseBusy,
    /// The database file or its directory cannot be written.
    #[error("the database is read-only: {0}")]
    ReadOnly(String),
    /// The database was written by a newer VideosDGX.
    #[error(
        "database {path} has schema version {found}, newer than this build supports ({supported}); \
         upgrade VideosDGX or use another --data directory"
    )]
    SchemaTooNew {
        path: PathBuf,
        found: i64,
        supported: i64,
    },
    /// The request conflicts with the current state (e.g. retrying a running job).
    #[error("{0}")]
    Conflict(String),
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

pub type Result<T, E = StudioError> = std::result::Result<T, E>;

impl StudioError {
    pub fn not_found(what: &'static str, id: impl ToString) -> Self {
        Self::NotFound {
            what,
            id: id.to_string(),
        }
    }

    /// Stable machine-readable code for API clients and scripts.
    pub fn code(&self) -> &'static str {
        match self {
            Self::NotFound { .. } => "not_found",
            Self::Invalid(_) => "invalid",
            Self::Refused(_) => "refused",
            Self::NotMedia(_) => "not_media",
            Self::TooLarge { .. } => "too_large",
            Self::StorageFull(_) => "storage_full",
            Self::DatabaseBusy => "database_busy",
            Self::ReadOnly(_) => "database_read_only",
            Self::SchemaTooNew { .. } => "schema_too_new",
            Self::Conflict(_) => "conflict",
            Self::Internal(_) => "internal",
        }
    }
}

impl From<rusqlite::Error> for StudioError {
    fn from(err: rusqlite::Error) -> Self {
        use rusqlite::ErrorCode;
        match err.sqlite_error_code() {
            Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => Self::DatabaseBusy,
            Some(ErrorCode::ReadOnly) => Self::ReadOnly(err.to_string()),
            Some(ErrorCode::DiskFull) => Self::StorageFull(err.to_string()),
            _ => Self::Internal(anyhow::Error::new(err).context("database error")),
        }
    }
}

impl From<std::io::Error> for StudioError {
    fn from(err: std::io::Error) -> Self {
        use std::io::ErrorKind;
        match err.kind() {
            ErrorKind::StorageFull | ErrorKind::FileTooLarge | ErrorKind::QuotaExceeded => {
                Self::StorageFull(err.to_string())
            }
            ErrorKind::ReadOnlyFilesystem => Self::ReadOnly(err.to_string()),
            _ => Self::Internal(err.into()),
        }
    }
}

impl From<tantivy::TantivyError> for StudioError {
    fn from(err: tantivy::TantivyError) -> Self {
        Self::Internal(anyhow::Error::new(err).context("search index error"))
    }
}

impl StudioError {
    /// Whether another attempt would fail alike: the job queue fails such a job at once.
    pub fn is_permanent(&self) -> bool {
        matches!(self, Self::Refused(_))
    }

    /// Adds context to internal errors; errors with their own code keep their message.
    pub fn context_internal(self, context: String) -> Self {
        match self {
            Self::Internal(e) => Self::Internal(e.context(context)),
            other => other,
        }
    }
}
