//! Errors: every code of the envelope (docs/abi.md) as a variant, with its message and deciding rule, so a
//! guest can react to a denial (`Error::PermissionDenied { rule, .. }`) instead of parsing strings.

use core::fmt;

/// The result of every SDK call and of a job.
pub type Result<T, E = Error> = core::result::Result<T, E>;

#[derive(Debug, Clone, PartialEq)]
pub enum Error {
    /// A deny rule matched, no allow rule matched, or the operation is not in the manifest (`rule` is
    /// `"manifest"` then); `rule` is the deciding `policy/rule`.
    PermissionDenied { rule: Option<String>, message: String },
    /// A `spec.limits` bucket is empty; `rule` names the limit, `retry_after_ms` says when to retry.
    RateLimited { rule: Option<String>, message: String, retry_after_ms: u64 },
    UnknownOperation { message: String },
    InvalidArgument { message: String },
    NotFound { message: String },
    /// `credentials.store` of a name that is already stored, without `replace: Some(true)`.
    AlreadyExists { message: String },
    LibraryRequired { message: String },
    ResourceExhausted { message: String },
    Internal { message: String },
    /// An envelope code this SDK does not know (a newer host).
    Other { code: String, message: String, rule: Option<String> },
    /// The ABI itself failed (-1 a range outside memory, -2 a request over the size cap).
    Abi(i32),
    /// A request could not be encoded, or a response/input did not have the expected shape.
    Decode(String),
    /// The job stops because the host asked it to (`JobContext::check_interrupt`); exit code 1.
    Interrupted,
    /// The job failed for its own reason; exit code 2.
    Failed(String),
}

impl Error {
    /// Build from an error envelope's fields.
    pub fn from_envelope(code: &str, message: String, rule: Option<String>, retry_after_ms: Option<u64>) -> Self {
        match code {
            "PERMISSION_DENIED" => Error::PermissionDenied { rule, message },
            "RATE_LIMITED" => Error::RateLimited { rule, message, retry_after_ms: retry_after_ms.unwrap_or(0) },
            "UNKNOWN_OPERATION" => Error::UnknownOperation { message },
            "INVALID_ARGUMENT" => Error::InvalidArgument { message },
            "NOT_FOUND" => Error::NotFound { message },
            "ALREADY_EXISTS" => Error::AlreadyExists { message },
            "LIBRARY_REQUIRED" => Error::LibraryRequired { message },
            "RESOURCE_EXHAUSTED" => Error::ResourceExhausted { message },
            "INTERNAL" => Error::Internal { message },
            _ => Error::Other { code: code.to_string(), message, rule },
        }
    }

    /// The envelope code (`"PERMISSION_DENIED"`, ...), or the SDK's own: `ABI`, `DECODE`, `INTERRUPTED`, `FAILED`.
    pub fn code(&self) -> &str {
        match self {
            Error::PermissionDenied { .. } => "PERMISSION_DENIED",
            Error::RateLimited { .. } => "RATE_LIMITED",
            Error::UnknownOperation { .. } => "UNKNOWN_OPERATION",
            Error::InvalidArgument { .. } => "INVALID_ARGUMENT",
            Error::NotFound { .. } => "NOT_FOUND",
            Error::AlreadyExists { .. } => "ALREADY_EXISTS",
            Error::LibraryRequired { .. } => "LIBRARY_REQUIRED",
            Error::ResourceExhausted { .. } => "RESOURCE_EXHAUSTED",
            Error::Internal { .. } => "INTERNAL",
            Error::Other { code, .. } => code,
            Error::Abi(_) => "ABI",
            Error::Decode(_) => "DECODE",
            Error::Interrupted => "INTERRUPTED",
            Error::Failed(_) => "FAILED",
        }
    }

    /// The deciding rule, when the host named one.
    pub fn rule(&self) -> Option<&str> {
        match self {
            Error::PermissionDenied { rule, .. } | Error::RateLimited { rule, .. } | Error::Other { rule, .. } => {
                rule.as_deref()
            }
            _ => None,
        }
    }

    pub fn message(&self) -> String {
        match self {
            Error::PermissionDenied { message, .. }
            | Error::RateLimited { message, .. }
            | Error::UnknownOperation { message }
            | Error::InvalidArgument { message }
            | Error::NotFound { message }
            | Error::AlreadyExists { message }
            | Error::LibraryRequired { message }
            | Error::ResourceExhausted { message }
            | Error::Internal { message }
            | Error::Other { message, .. }
            | Error::Decode(message)
            | Error::Failed(message) => message.clone(),
            Error::Abi(-1) => "ABI fault: a range outside linear memory".to_string(),
            Error::Abi(-2) => "ABI fault: the request is over the host's size cap".to_string(),
            Error::Abi(n) => format!("ABI fault {}", n),
            Error::Interrupted => "interrupted by the host".to_string(),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code(), self.message())?;
        match self.rule() {
            Some(rule) => write!(f, " (rule {})", rule),
            None => Ok(()),
        }
    }
}

impl std::error::Error for Error {}

impl From<serde_json::Error> for Error {
    fn from(err: serde_json::Error) -> Self {
        Error::Decode(err.to_string())
    }
}
