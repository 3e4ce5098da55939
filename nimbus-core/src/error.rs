//! The domain error. Services return it; the API gateway maps it to a status code and
//! the contract's error body in one place.

/// Why an operation failed, in terms a caller can act on.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request is malformed or out of range.
    #[error("{0}")]
    Invalid(String),
    /// The code package was rejected.
    #[error("{0}")]
    InvalidCode(String),
    /// No credentials, or credentials that do not verify.
    #[error("{0}")]
    Unauthenticated(String),
    /// The caller's role lacks the right.
    #[error("{0}")]
    Forbidden(String),
    /// The resource does not exist, or belongs to another tenant.
    #[error("{kind} '{name}' was not found")]
    NotFound {
        /// The resource kind, e.g. "Function"; the error code is `{kind}NotFound`.
        kind: &'static str,
        /// The name the caller asked for.
        name: String,
    },
    /// The resource exists, or is busy with another change.
    #[error("{0}")]
    Conflict(String),
    /// A tenant limit would be exceeded.
    #[error("{0}")]
    LimitExceeded(String),
    /// A tenant's bounded backlog (queued events, a queue's messages) is full for
    /// now: try again later.
    #[error("{0}")]
    TooManyRequests(String),
    /// The payload is too large.
    #[error("{0}")]
    PayloadTooLarge(String),
    /// A backend (database, bus, object store) is unavailable right now.
    #[error("{0}")]
    Unavailable(String),
    /// A bug or an unexpected fault: logged in full, shown to the caller as a sentence.
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

/// Result with the domain error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// A `NotFound` for `kind` named `name`.
    pub fn not_found(kind: &'static str, name: impl Into<String>) -> Self {
        Error::NotFound {
            kind,
            name: name.into(),
        }
    }
}

impl From<sea_orm::DbErr> for Error {
    fn from(e: sea_orm::DbErr) -> Self {
        match &e {
            sea_orm::DbErr::Conn(_) | sea_orm::DbErr::ConnectionAcquire(_) => {
                Error::Unavailable(format!("metadata store unavailable: {e}"))
            }
            _ => Error::Internal(anyhow::Error::new(e).context("metadata store")),
        }
    }
}

impl From<crate::bus::BusError> for Error {
    fn from(e: crate::bus::BusError) -> Self {
        Error::Unavailable(format!("message bus unavailable: {e}"))
    }
}
