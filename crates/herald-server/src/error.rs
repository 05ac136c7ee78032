//! The one API error type. Client mistakes become 4xx with the Azure error
//! body; internal faults are logged with their cause and answered with an
//! opaque 500 that never carries internal detail.

use axum::Json;
use axum::extract::{FromRequest, Request};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use herald_vault::VaultError;
use serde::de::DeserializeOwned;
use serde_json::json;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub inner: Option<&'static str>,
    /// `WWW-Authenticate` value for 401s on the vault API.
    pub challenge: Option<String>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            inner: None,
            challenge: None,
        }
    }

    pub fn bad_parameter(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "BadParameter", message)
    }

    pub fn not_found(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, code, message)
    }

    pub fn with_inner(mut self, inner: &'static str) -> Self {
        self.inner = Some(inner);
        self
    }

    /// Logs the cause and returns the opaque 500.
    pub fn internal(context: &str, cause: impl std::fmt::Display) -> Self {
        let reference = uuid::Uuid::new_v4();
        tracing::error!(%reference, error = %cause, "internal error while {context}");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalError",
            format!(
                "An internal error occurred (reference {reference}). Retry the request; if it keeps failing, look for this reference in the server log."
            ),
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut error = json!({ "code": self.code, "message": self.message });
        if let Some(inner) = self.inner {
            error["innererror"] = json!({ "code": inner });
        }
        let mut resp = (self.status, Json(json!({ "error": error }))).into_response();
        // Azure.Core clients read the code from this header too.
        if let Ok(v) = HeaderValue::from_str(self.code) {
            resp.headers_mut().insert("x-ms-error-code", v);
        }
        if let Some(c) = self.challenge
            && let Ok(v) = HeaderValue::from_str(&c)
        {
            resp.headers_mut().insert(header::WWW_AUTHENTICATE, v);
        }
        resp
    }
}

use herald_storage::{Violation, violation_in};

impl ApiError {
    /// Two writers raced for one key and this one lost.
    fn conflict() -> Self {
        Self::new(
            StatusCode::CONFLICT,
            "Conflict",
            "Another request changed this resource at the same time; retry.",
        )
    }
}

impl From<herald_automation::AutomationError> for ApiError {
    fn from(e: herald_automation::AutomationError) -> Self {
        use herald_automation::AutomationError as E;
        match e {
            E::Invalid(m) => Self::new(StatusCode::BAD_REQUEST, "BadRequest", m),
            E::NotFound { what, name } => {
                let code = match what {
                    "runbook" | "runbook version" => "RunbookNotFound",
                    "webhook" => "WebhookNotFound",
                    "job" => "JobNotFound",
                    "credential" | "variable" | "asset" => "AssetNotFound",
                    _ => "NotFound",
                };
                Self::not_found(code, format!("The {what} '{name}' was not found."))
            }
            E::Conflict(m) => Self::new(StatusCode::CONFLICT, "Conflict", m),
            E::Webhook { code, message } => Self::new(StatusCode::BAD_REQUEST, code, message),
            E::RunbookGone(m) => Self::not_found("RunbookNotFound", m),
            E::Forbidden(m) => Self::new(StatusCode::FORBIDDEN, "Forbidden", m),
            E::Storage(e) => match e.violation() {
                Some(Violation::ForeignKey) => Self::not_found(
                    "RunbookNotFound",
                    "The runbook was deleted while this request ran.",
                ),
                Some(Violation::Unique) => Self::conflict(),
                None => Self::internal("using automation storage", e),
            },
            E::Internal(m) => Self::internal("running automation", m),
        }
    }
}

impl From<VaultError> for ApiError {
    fn from(e: VaultError) -> Self {
        let msg = e.to_string();
        match e {
            VaultError::SecretNotFound(_) | VaultError::DeletedSecretNotFound(_) => {
                Self::not_found("SecretNotFound", msg)
            }
            VaultError::Disabled => {
                Self::new(StatusCode::FORBIDDEN, "Forbidden", msg).with_inner("SecretDisabled")
            }
            VaultError::DeletedButRecoverable(_) => {
                Self::new(StatusCode::CONFLICT, "Conflict", msg)
                    .with_inner("ObjectIsDeletedButRecoverable")
            }
            VaultError::RestoreConflict(_) => Self::new(StatusCode::CONFLICT, "Conflict", msg),
            VaultError::PurgeProtected(_) => Self::new(StatusCode::FORBIDDEN, "Forbidden", msg),
            VaultError::BadParameter(_) => Self::bad_parameter(msg),
            VaultError::VaultNotFound(_) => Self::not_found("VaultNotFound", msg),
            VaultError::VaultExists(_) => {
                Self::new(StatusCode::CONFLICT, "VaultAlreadyExists", msg)
            }
            VaultError::Internal(cause) => match violation_in(cause.as_ref()) {
                Some(Violation::ForeignKey) => Self::not_found(
                    "VaultNotFound",
                    "The vault was deleted while this request ran.",
                ),
                Some(Violation::Unique) => Self::conflict(),
                None => Self::internal("serving a vault request", format!("{cause:#}")),
            },
        }
    }
}

impl From<herald_hubs::HubError> for ApiError {
    fn from(e: herald_hubs::HubError) -> Self {
        use herald_hubs::HubError as H;
        let msg = e.to_string();
        match e {
            H::NotFound { .. } => Self::new(StatusCode::NOT_FOUND, "NotFound", msg),
            H::Conflict(_) => Self::new(StatusCode::CONFLICT, "Conflict", msg),
            H::BadRequest(_) => Self::new(StatusCode::BAD_REQUEST, "BadRequest", msg),
            H::TooLarge(_) => Self::new(StatusCode::FORBIDDEN, "QuotaExceeded", msg),
            H::Unauthorized(_) => Self::new(StatusCode::UNAUTHORIZED, "Unauthorized", msg),
            H::Storage(cause) => match cause.violation() {
                Some(Violation::ForeignKey) => Self::new(
                    StatusCode::NOT_FOUND,
                    "NotFound",
                    "The parent entity was deleted while this request ran.",
                ),
                Some(Violation::Unique) => Self::conflict(),
                None => Self::internal("serving a hubs request", cause),
            },
            H::Internal(cause) => Self::internal("serving a hubs request", cause),
        }
    }
}

impl From<herald_router::RouterError> for ApiError {
    fn from(e: herald_router::RouterError) -> Self {
        use herald_router::RouterError as R;
        use herald_router::schema::PublishError as P;
        let msg = e.to_string();
        match e {
            R::TopicNotFound(_) | R::SubscriptionNotFound(_) => {
                Self::new(StatusCode::NOT_FOUND, "NotFound", msg)
            }
            R::TopicExists(_) => Self::new(StatusCode::CONFLICT, "Conflict", msg),
            R::BadRequest(_) => Self::new(StatusCode::BAD_REQUEST, "BadRequest", msg),
            R::Unauthorized(_) => Self::new(StatusCode::UNAUTHORIZED, "Unauthorized", msg),
            R::Forbidden(_) => Self::new(StatusCode::FORBIDDEN, "Forbidden", msg),
            R::Publish(P::BadRequest { code, message }) => {
                Self::new(StatusCode::BAD_REQUEST, "BadRequest", message).with_inner(code)
            }
            R::Publish(P::TooLarge(m)) => {
                Self::new(StatusCode::PAYLOAD_TOO_LARGE, "PayloadTooLarge", m)
            }
            R::Publish(P::UnsupportedMediaType(m)) => Self::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "UnsupportedMediaType",
                m,
            ),
            R::Internal(cause) => match violation_in(cause.as_ref()) {
                Some(Violation::ForeignKey) => Self::new(
                    StatusCode::NOT_FOUND,
                    "NotFound",
                    "The topic was deleted while this request ran.",
                ),
                Some(Violation::Unique) => Self::conflict(),
                None => Self::internal("serving an event request", format!("{cause:#}")),
            },
        }
    }
}

/// A JSON body parsed with Azure-shaped errors: 413 past the body limit,
/// 400 for malformed JSON. The message never echoes body content, which
/// may hold a secret value.
pub struct AzJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for AzJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = axum::body::Bytes::from_request(req, state)
            .await
            .map_err(body_rejection)?;
        parse_json(&bytes).map(AzJson)
    }
}

/// A body that could not be read: too large (413) or broken (400).
pub fn body_rejection(e: axum::extract::rejection::BytesRejection) -> ApiError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "RequestEntityTooLarge",
            "The request body is larger than this endpoint accepts.",
        )
    } else {
        ApiError::bad_parameter("The request body could not be read.")
    }
}

pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.is_empty() {
        return Err(ApiError::bad_parameter(
            "The request body is empty; a JSON object is required.",
        ));
    }
    serde_json::from_slice(bytes).map_err(|e| {
        let what = match e.classify() {
            serde_json::error::Category::Syntax | serde_json::error::Category::Eof => {
                "is not valid JSON"
            }
            _ => "does not match the expected shape",
        };
        // serde's text names fields and types; strip any quoted input value.
        let detail = e.to_string();
        let detail = match detail.find('"') {
            Some(_) if detail.starts_with("invalid") => {
                format!("line {} column {}", e.line(), e.column())
            }
            _ => detail,
        };
        ApiError::bad_parameter(format!("The request body {what}: {detail}"))
    })
}

/// Path parameters with Azure-shaped errors (a bad segment is a 400).
pub struct AzPath<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> axum::extract::FromRequestParts<S> for AzPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Path(v)| AzPath(v))
            .map_err(|_| {
                ApiError::bad_parameter("A path segment is not valid; names are UTF-8 text.")
            })
    }
}

/// Query parameters with Azure-shaped errors.
pub struct AzQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> axum::extract::FromRequestParts<S> for AzQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Query(v)| AzQuery(v))
            .map_err(|e| {
                ApiError::bad_parameter(format!(
                    "A query parameter is not valid: {}",
                    e.body_text()
                ))
            })
    }
}

/// A raw body with Azure-shaped errors (413 past the limit).
pub struct AzBytes(pub axum::body::Bytes);

impl<S: Send + Sync> FromRequest<S> for AzBytes {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        axum::body::Bytes::from_request(req, state)
            .await
            .map(AzBytes)
            .map_err(body_rejection)
    }
}

impl From<herald_identity::IdentityError> for ApiError {
    fn from(e: herald_identity::IdentityError) -> Self {
        use herald_identity::IdentityError as I;
        let msg = e.to_string();
        match e {
            I::NotFound(_) => Self::not_found("NotFound", msg),
            I::Invalid(_) => Self::new(StatusCode::BAD_REQUEST, "BadRequest", msg),
            I::Conflict(_) => Self::new(StatusCode::CONFLICT, "Conflict", msg),
            I::Storage(cause) => match cause.violation() {
                Some(Violation::ForeignKey) => Self::new(
                    StatusCode::NOT_FOUND,
                    "NotFound",
                    "The parent resource was deleted while this request ran.",
                ),
                Some(Violation::Unique) => Self::conflict(),
                None => Self::internal("serving an identity request", cause),
            },
            I::Internal(cause) => Self::internal("serving an identity request", cause),
        }
    }
}
