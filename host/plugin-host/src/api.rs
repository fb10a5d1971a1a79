//! Versions of the WIT package the host speaks. Every released version keeps its own copy
//! under wit/vX.Y.Z and its own bindings module; a plugin is bound through the module of the
//! newest version compatible with what it was built against (semver: same major, or same
//! minor while the major is 0), so old plugins keep loading as the API grows.

use std::fmt;

/// One WIT package version with bindings in this host.
/// Ordered oldest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub enum ApiVersion {
    V0_1,
    V0_2,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ApiError {
    #[error(
        "the plugin was built against API {wanted}, newer than this host's {newest} in that line: update VideosDGX to use it"
    )]
    Newer {
        wanted: semver::Version,
        newest: semver::Version,
    },
    #[error(
        "the plugin was built against API {wanted}, which this host does not support (it speaks {supported})"
    )]
    Unsupported {
        wanted: semver::Version,
        supported: String,
    },
}

impl ApiVersion {
    /// Oldest first.
    pub const ALL: [ApiVersion; 2] = [ApiVersion::V0_1, ApiVersion::V0_2];

    /// The exact package version whose WIT this host carries for this line.
    pub fn package_version(self) -> semver::Version {
        match self {
            ApiVersion::V0_1 => semver::Version::new(0, 1, 0),
            ApiVersion::V0_2 => semver::Version::new(0, 2, 0),
        }
    }

    /// The newest line able to serve a plugin built against `wanted`.
    pub fn supporting(wanted: &semver::Version) -> Result<ApiVersion, ApiError> {
        for api in ApiVersion::ALL.into_iter().rev() {
            let have = api.package_version();
            let same_line = if have.major == 0 {
                wanted.major == 0 && wanted.minor == have.minor
            } else {
                wanted.major == have.major
            };
            if same_line {
                if *wanted > have {
                    return Err(ApiError::Newer {
                        wanted: wanted.clone(),
                        newest: have,
                    });
                }
                return Ok(api);
            }
        }
        Err(ApiError::Unsupported {
            wanted: wanted.clone(),
            supported: ApiVersion::ALL
                .iter()
                .map(|a| a.package_version().to_string())
                .collect::<Vec<_>>()
                .join(", "),
        })
    }
}

impl fmt::Display for ApiVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.package_version())
    }
}
