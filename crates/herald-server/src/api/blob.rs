//! The Blob data plane on `{account}.{blob_base}`: the REST subset the
//! Azure Storage SDKs use, with Azure's headers, XML bodies and errors.
//!
//! One handler reads the operation off the method, path and `comp` /
//! `restype` query, as the service itself does: Blob operations share
//! paths and differ only there. Every request is authenticated first (Shared
//! Key or SAS; anonymous access is off), then parsed, so an unauthenticated
//! caller learns nothing about what exists.

use crate::state::AppState;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use herald_blob::sas::{Needed, Resource};
use herald_blob::service::{BlobError, BlobHeaders, BlobRead, Conditions, Entry, NewBlob};
use herald_blob::xml;
use herald_storage::{BlobRecord, ContainerRecord};

/// The service version Herald answers with when the client sends none.
const VERSION: &str = "2025-01-05";
/// Largest Put Block List body: 50,000 ids of up to 88 characters, tagged.
const MAX_BLOCK_LIST: usize = 8 * 1024 * 1024;
/// Largest metadata-only body Herald reads (there is none; bounded anyway).
const MAX_SMALL_BODY: usize = 64 * 1024;

/// A Blob error response: XML body, `x-ms-error-code` header.
struct Failure {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl Failure {
    fn new(status: u16, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST),
            code,
            message: message.into(),
        }
    }

    fn auth(message: impl Into<String>) -> Self {
        Self::new(403, "AuthenticationFailed", message)
    }

    fn respond(self, head: bool, request_id: &str) -> Response {
        let now = chrono::Utc::now().timestamp_millis();
        let body = if head || self.status == StatusCode::NOT_MODIFIED {
            Body::empty()
        } else {
            Body::from(xml::error_xml(self.code, &self.message, request_id, now))
        };
        let mut resp = Response::new(body);
        *resp.status_mut() = self.status;
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/xml"),
        );
        if let Ok(v) = HeaderValue::from_str(self.code) {
            h.insert("x-ms-error-code", v);
        }
        resp
    }
}

impl From<BlobError> for Failure {
    fn from(e: BlobError) -> Self {
        match e {
            BlobError::Client {
                status,
                code,
                message,
            } => Failure::new(status, code, message),
            BlobError::NotModified => Failure::new(304, "ConditionNotMet", ""),
            other => {
                let reference = uuid::Uuid::new_v4();
                tracing::error!(%reference, error = %other, "internal error in the blob service");
                Failure::new(
                    500,
                    "InternalError",
                    format!(
                        "The server encountered an internal error (reference {reference}). Please retry the request."
                    ),
                )
            }
        }
    }
}

type Res<T> = Result<T, Failure>;

/// The parsed address of a request.
struct Target {
    account: String,
    container: Option<String>,
    blob: Option<String>,
}

fn decode(seg: &str) -> Res<String> {
    percent_encoding::percent_decode_str(seg)
        .decode_utf8()
        .map(|s| s.into_owned())
        .map_err(|_| {
            Failure::new(
                400,
                "InvalidUri",
                "The requested URI does not represent any resource on the server.",
            )
        })
}

fn target(account: &str, path: &str) -> Res<Target> {
    let path = path.strip_prefix('/').unwrap_or(path);
    let (container, blob) = match path.split_once('/') {
        None if path.is_empty() => (None, None),
        None => (Some(decode(path)?), None),
        Some((c, "")) => (Some(decode(c)?), None),
        Some((c, b)) => (Some(decode(c)?), Some(decode(b)?)),
    };
    Ok(Target {
        account: account.to_owned(),
        container,
        blob,
    })
}

fn q(query: Option<&str>, name: &str) -> Option<String> {
    crate::api::query_param(query, name)
}

fn hv<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

fn conditions(h: &HeaderMap) -> Res<Conditions> {
    let date = |name: &str| -> Res<Option<i64>> {
        match hv(h, name) {
            None => Ok(None),
            Some(v) => xml::parse_http_date(v).map(Some).ok_or_else(|| {
                Failure::new(400, "InvalidHeaderValue", format!("The value for one of the HTTP headers is not in the correct format: {name}."))
            }),
        }
    };
    Ok(Conditions {
        if_match: hv(h, "if-match").map(str::to_owned),
        if_none_match: hv(h, "if-none-match").map(str::to_owned),
        if_modified_since: date("if-modified-since")?,
        if_unmodified_since: date("if-unmodified-since")?,
    })
}

fn metadata(h: &HeaderMap) -> Res<Vec<(String, String)>> {
    herald_blob::names::parse_metadata_headers(h)
        .map_err(|e| Failure::new(400, "InvalidMetadata", e.0))
}

/// Properties from `x-ms-blob-content-*` (Put Blob, Put Block List, Set
/// Blob Properties) or, for Put Blob, the request's own content headers.
fn blob_headers(h: &HeaderMap, own: bool) -> BlobHeaders {
    let pick = |ms: &str, plain: &str| {
        hv(h, ms)
            .or_else(|| if own { hv(h, plain) } else { None })
            .map(str::to_owned)
    };
    BlobHeaders {
        content_type: pick("x-ms-blob-content-type", "content-type"),
        content_encoding: pick("x-ms-blob-content-encoding", "content-encoding"),
        content_language: pick("x-ms-blob-content-language", "content-language"),
        content_md5: pick("x-ms-blob-content-md5", "content-md5"),
        cache_control: pick("x-ms-blob-cache-control", "cache-control"),
        content_disposition: pick("x-ms-blob-content-disposition", "content-disposition"),
    }
}

/// `bytes=a-b` or `bytes=a-` from `x-ms-range` or `Range`.
fn range(h: &HeaderMap) -> Res<Option<(u64, Option<u64>)>> {
    let Some(v) = hv(h, "x-ms-range").or_else(|| hv(h, "range")) else {
        return Ok(None);
    };
    let bad = || {
        Failure::new(
            416,
            "InvalidRange",
            "The range specified is invalid for the current size of the resource.",
        )
    };
    let spec = v.trim().strip_prefix("bytes=").ok_or_else(bad)?;
    let (a, b) = spec.split_once('-').ok_or_else(bad)?;
    let start: u64 = a.trim().parse().map_err(|_| bad())?;
    let end = match b.trim() {
        "" => None,
        e => Some(e.parse::<u64>().map_err(|_| bad())?),
    };
    if end.is_some_and(|e| e < start) {
        return Err(bad());
    }
    Ok(Some((start, end)))
}

/// Which SAS permission and resource an operation needs.
fn needed<'a>(
    method: &Method,
    t: &'a Target,
    comp: Option<&str>,
    restype: Option<&str>,
) -> Needed<'a> {
    let container = t.container.as_deref().unwrap_or("");
    let (permission, resource) = match (t.container.is_some(), t.blob.is_some(), restype) {
        (false, _, _) => ('l', Resource::Service),
        (true, false, _) if comp == Some("list") => ('l', Resource::Container),
        (true, false, _) => match *method {
            Method::GET | Method::HEAD => ('r', Resource::Container),
            Method::DELETE => ('d', Resource::Container),
            _ => ('w', Resource::Container),
        },
        (true, true, _) => match *method {
            Method::GET | Method::HEAD => ('r', Resource::Object),
            Method::DELETE => ('d', Resource::Object),
            _ => ('w', Resource::Object),
        },
    };
    Needed {
        permission,
        resource,
        container,
        blob: t.blob.as_deref(),
    }
}

/// The Blob data plane's one entry point.
pub async fn handle(State(st): State<AppState>, account: String, req: Request) -> Response {
    let request_id = uuid::Uuid::new_v4().to_string();
    let head = req.method() == Method::HEAD;
    let version = hv(req.headers(), "x-ms-version")
        .filter(|v| v.len() <= 32)
        .unwrap_or(VERSION)
        .to_owned();
    let mut resp = match serve(&st, &account, req).await {
        Ok(r) => r,
        Err(f) => f.respond(head, &request_id),
    };
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        h.insert("x-ms-request-id", v);
    }
    if let Ok(v) = HeaderValue::from_str(&version) {
        h.insert("x-ms-version", v);
    }
    if let Ok(v) = HeaderValue::from_str(&xml::http_date(chrono::Utc::now().timestamp_millis())) {
        h.insert(header::DATE, v);
    }
    resp
}

async fn authenticate(
    st: &AppState,
    account: &str,
    req: &axum::http::request::Parts,
    need: &Needed<'_>,
) -> Res<()> {
    let keys = st
        .blob
        .signing_keys(account)
        .await
        .map_err(Failure::from)?
        // An unknown account fails like a wrong key: no existence oracle.
        .ok_or_else(|| Failure::auth("Server failed to authenticate the request. Make sure the value of Authorization header is formed correctly including the signature."))?;
    let keys: Vec<&[u8]> = keys.iter().map(Vec::as_slice).collect();
    let query = req.uri.query();
    if req.headers.contains_key(header::AUTHORIZATION) {
        herald_blob::auth::check_date(&req.headers, chrono::Utc::now().timestamp())
            .map_err(|e| Failure::auth(e.to_string()))?;
        return herald_blob::auth::verify_shared_key(
            account,
            &keys,
            req.method.as_str(),
            req.uri.path(),
            query,
            &req.headers,
        )
        .map_err(|e| Failure::auth(e.to_string()));
    }
    if let Some(qs) = query
        && herald_blob::sas::is_sas(qs)
    {
        return herald_blob::sas::verify(
            account,
            &keys,
            qs,
            need,
            chrono::Utc::now().timestamp(),
            true,
        )
        .map_err(|e| Failure::new(403, e.code(), e.to_string()));
    }
    Err(Failure::new(
        401,
        "NoAuthenticationInformation",
        "Server failed to authenticate the request. Please refer to the information in the www-authenticate header.",
    ))
}

async fn serve(st: &AppState, account: &str, req: Request) -> Res<Response> {
    // Parts only across the await: a request body is not `Sync`.
    let (parts, body) = req.into_parts();
    let t = target(account, parts.uri.path())?;
    let query = parts.uri.query().map(str::to_owned);
    let query = query.as_deref();
    let comp = q(query, "comp");
    let restype = q(query, "restype");
    let need = needed(&parts.method, &t, comp.as_deref(), restype.as_deref());
    authenticate(st, account, &parts, &need).await?;
    let method = parts.method.clone();
    let headers = parts.headers;
    match (&t.container, &t.blob) {
        (None, _) => service_op(st, &t, &method, comp.as_deref(), query).await,
        (Some(c), None) => {
            container_op(
                st,
                &t,
                c,
                &method,
                comp.as_deref(),
                restype.as_deref(),
                query,
                &headers,
            )
            .await
        }
        (Some(c), Some(b)) => {
            blob_op(
                st,
                &t,
                c,
                b,
                &method,
                comp.as_deref(),
                query,
                &headers,
                body,
            )
            .await
        }
    }
}

fn endpoint(st: &AppState, account: &str, headers: &HeaderMap) -> String {
    let port = hv(headers, "host")
        .and_then(|h| h.rsplit_once(':').map(|(_, p)| p.to_owned()))
        .filter(|p| p != "443");
    match port {
        Some(p) => format!("https://{account}.{}:{p}/", st.blob.base()),
        None => format!("https://{account}.{}/", st.blob.base()),
    }
}

fn xml_response(status: StatusCode, body: String) -> Response {
    let mut r = Response::new(Body::from(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/xml"),
    );
    r
}

fn max_results(query: Option<&str>) -> Res<Option<u32>> {
    match q(query, "maxresults") {
        None => Ok(None),
        Some(v) => v.parse::<u32>().ok().filter(|n| *n >= 1).map(Some).ok_or_else(|| {
            Failure::new(400, "OutOfRangeQueryParameterValue", "One of the query parameters specified in the request URI is outside the permissible range: maxresults.")
        }),
    }
}

async fn service_op(
    st: &AppState,
    t: &Target,
    method: &Method,
    comp: Option<&str>,
    query: Option<&str>,
) -> Res<Response> {
    match (method, comp) {
        (&Method::GET, Some("list")) => {
            let prefix = q(query, "prefix").unwrap_or_default();
            let marker = q(query, "marker").unwrap_or_default();
            let max = max_results(query)?;
            let include_metadata =
                q(query, "include").is_some_and(|i| i.split(',').any(|x| x == "metadata"));
            let page = st
                .blob
                .list_containers(&t.account, &prefix, &marker, max)
                .await?;
            let items: Vec<xml::ContainerItem> = page.items.iter().map(container_item).collect();
            let ep = format!("https://{}.{}/", t.account, st.blob.base());
            Ok(xml_response(
                StatusCode::OK,
                xml::list_containers_xml(
                    &ep,
                    Some(&prefix).filter(|p| !p.is_empty()).map(String::as_str),
                    Some(&marker).filter(|m| !m.is_empty()).map(String::as_str),
                    max,
                    &items,
                    page.next.as_deref(),
                    include_metadata,
                ),
            ))
        }
        // Get Account Information: what the SDK asks before some calls.
        (&Method::GET | &Method::HEAD, Some("properties"))
            if q(query, "restype").as_deref() == Some("account") =>
        {
            let mut r = StatusCode::OK.into_response();
            let h = r.headers_mut();
            h.insert("x-ms-sku-name", HeaderValue::from_static("Standard_LRS"));
            h.insert("x-ms-account-kind", HeaderValue::from_static("StorageV2"));
            h.insert("x-ms-is-hns-enabled", HeaderValue::from_static("false"));
            Ok(r)
        }
        _ => Err(unsupported()),
    }
}

fn unsupported() -> Failure {
    Failure::new(
        400,
        "UnsupportedHttpVerb",
        "The resource doesn't support the specified HTTP verb or operation; Herald serves the Blob REST subset listed in docs/operations.md.",
    )
}

fn container_item(c: &ContainerRecord) -> xml::ContainerItem {
    xml::ContainerItem {
        name: c.name.clone(),
        last_modified_ms: c.last_modified,
        etag: c.etag.clone(),
        metadata: herald_blob::service::metadata_of(&c.metadata),
    }
}

fn set_meta_headers(h: &mut HeaderMap, meta: &[(String, String)]) {
    for (k, v) in meta {
        if let (Ok(name), Ok(value)) = (
            header::HeaderName::from_bytes(format!("x-ms-meta-{k}").as_bytes()),
            HeaderValue::from_str(v),
        ) {
            h.insert(name, value);
        }
    }
}

fn etag_headers(h: &mut HeaderMap, etag: &str, last_modified: i64) {
    if let Ok(v) = HeaderValue::from_str(etag) {
        h.insert(header::ETAG, v);
    }
    if let Ok(v) = HeaderValue::from_str(&xml::http_date(last_modified)) {
        h.insert(header::LAST_MODIFIED, v);
    }
}

#[allow(clippy::too_many_arguments)]
async fn container_op(
    st: &AppState,
    t: &Target,
    container: &str,
    method: &Method,
    comp: Option<&str>,
    restype: Option<&str>,
    query: Option<&str>,
    headers: &HeaderMap,
) -> Res<Response> {
    let acct = &t.account;
    if comp == Some("list") && *method == Method::GET {
        let prefix = q(query, "prefix").unwrap_or_default();
        let marker = q(query, "marker").unwrap_or_default();
        let delimiter = q(query, "delimiter");
        let max = max_results(query)?;
        let include_metadata =
            q(query, "include").is_some_and(|i| i.split(',').any(|x| x == "metadata"));
        let listing = st
            .blob
            .list_blobs(acct, container, &prefix, delimiter.as_deref(), &marker, max)
            .await?;
        let entries: Vec<xml::ListEntry> = listing
            .entries
            .iter()
            .map(|e| match e {
                Entry::Blob(b) => xml::ListEntry::Blob(blob_item(b)),
                Entry::Prefix(p) => xml::ListEntry::Prefix(p.clone()),
            })
            .collect();
        let ep = format!("https://{acct}.{}/", st.blob.base());
        return Ok(xml_response(
            StatusCode::OK,
            xml::list_blobs_xml(
                &ep,
                container,
                Some(&prefix).filter(|p| !p.is_empty()).map(String::as_str),
                Some(&marker).filter(|m| !m.is_empty()).map(String::as_str),
                max,
                delimiter.as_deref(),
                &entries,
                listing.next_marker.as_deref(),
                include_metadata,
            ),
        ));
    }
    if restype != Some("container") {
        return Err(unsupported());
    }
    match (method, comp) {
        (&Method::PUT, None) => {
            let c = st
                .blob
                .create_container(acct, container, &metadata(headers)?)
                .await?;
            let mut r = StatusCode::CREATED.into_response();
            etag_headers(r.headers_mut(), &c.etag, c.last_modified);
            Ok(r)
        }
        (&Method::GET | &Method::HEAD, None | Some("metadata")) => {
            let c = st.blob.container(acct, container).await?;
            let mut r = StatusCode::OK.into_response();
            let h = r.headers_mut();
            etag_headers(h, &c.etag, c.last_modified);
            set_meta_headers(h, &herald_blob::service::metadata_of(&c.metadata));
            h.insert("x-ms-lease-status", HeaderValue::from_static("unlocked"));
            h.insert("x-ms-lease-state", HeaderValue::from_static("available"));
            h.insert(
                "x-ms-has-immutability-policy",
                HeaderValue::from_static("false"),
            );
            h.insert("x-ms-has-legal-hold", HeaderValue::from_static("false"));
            h.insert(
                "x-ms-default-encryption-scope",
                HeaderValue::from_static("$account-encryption-key"),
            );
            h.insert(
                "x-ms-deny-encryption-scope-override",
                HeaderValue::from_static("false"),
            );
            Ok(r)
        }
        (&Method::PUT, Some("metadata")) => {
            let c = st
                .blob
                .set_container_metadata(acct, container, &metadata(headers)?)
                .await?;
            let mut r = StatusCode::OK.into_response();
            etag_headers(r.headers_mut(), &c.etag, c.last_modified);
            Ok(r)
        }
        (&Method::DELETE, None) => {
            st.blob.delete_container(acct, container).await?;
            Ok(StatusCode::ACCEPTED.into_response())
        }
        _ => Err(unsupported()),
    }
}

fn blob_item(b: &BlobRecord) -> xml::BlobItem {
    xml::BlobItem {
        name: b.name.clone(),
        created_ms: b.created,
        last_modified_ms: b.last_modified,
        etag: b.etag.clone(),
        size: b.size as u64,
        content_type: b.content_type.clone(),
        content_encoding: b.content_encoding.clone(),
        content_language: b.content_language.clone(),
        content_md5: b.content_md5.clone(),
        cache_control: b.cache_control.clone(),
        content_disposition: b.content_disposition.clone(),
        metadata: herald_blob::service::metadata_of(&b.metadata),
    }
}

fn body_stream(body: Body) -> herald_blob::service::BodyStream {
    Box::pin(
        body.into_data_stream()
            .map(|r| r.map_err(std::io::Error::other)),
    )
}

async fn small_body(body: Body, limit: usize) -> Res<bytes::Bytes> {
    axum::body::to_bytes(body, limit).await.map_err(|_| {
        Failure::new(413, "RequestBodyTooLarge", format!("The request body is too large and exceeds the maximum permissible limit ({limit} bytes)."))
    })
}

fn blob_property_headers(h: &mut HeaderMap, b: &BlobRecord) {
    etag_headers(h, &b.etag, b.last_modified);
    let mut put = |name: &'static str, v: Option<&str>| {
        if let Some(v) = v
            && let Ok(v) = HeaderValue::from_str(v)
        {
            h.insert(name, v);
        }
    };
    put("content-type", Some(&b.content_type));
    put("content-encoding", b.content_encoding.as_deref());
    put("content-language", b.content_language.as_deref());
    put("cache-control", b.cache_control.as_deref());
    put("content-disposition", b.content_disposition.as_deref());
    put("x-ms-creation-time", Some(&xml::http_date(b.created)));
    h.insert("x-ms-blob-type", HeaderValue::from_static("BlockBlob"));
    h.insert("x-ms-lease-status", HeaderValue::from_static("unlocked"));
    h.insert("x-ms-lease-state", HeaderValue::from_static("available"));
    h.insert("x-ms-server-encrypted", HeaderValue::from_static("true"));
    h.insert("x-ms-access-tier", HeaderValue::from_static("Hot"));
    h.insert(
        "x-ms-access-tier-inferred",
        HeaderValue::from_static("true"),
    );
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    set_meta_headers(h, &herald_blob::service::metadata_of(&b.metadata));
}

#[allow(clippy::too_many_arguments)]
async fn blob_op(
    st: &AppState,
    t: &Target,
    container: &str,
    name: &str,
    method: &Method,
    comp: Option<&str>,
    query: Option<&str>,
    headers: &HeaderMap,
    body: Body,
) -> Res<Response> {
    let acct = &t.account;
    let svc = &st.blob;
    match (method, comp) {
        (&Method::PUT, None) => {
            match hv(headers, "x-ms-blob-type") {
                Some("BlockBlob") => {}
                Some(_) => {
                    return Err(Failure::new(
                        400,
                        "InvalidBlobType",
                        "Herald stores block blobs only (x-ms-blob-type: BlockBlob).",
                    ));
                }
                None => {
                    return Err(Failure::new(
                        400,
                        "MissingRequiredHeader",
                        "An HTTP header that's mandatory for this request is not specified: x-ms-blob-type.",
                    ));
                }
            }
            let b = svc
                .put_blob(
                    acct,
                    container,
                    name,
                    body_stream(body),
                    NewBlob {
                        headers: &blob_headers(headers, true),
                        metadata: &metadata(headers)?,
                        conditions: &conditions(headers)?,
                    },
                )
                .await?;
            let mut r = StatusCode::CREATED.into_response();
            let h = r.headers_mut();
            etag_headers(h, &b.etag, b.last_modified);
            if let Some(m) = &b.content_md5
                && let Ok(v) = HeaderValue::from_str(m)
            {
                h.insert("content-md5", v);
            }
            h.insert(
                "x-ms-request-server-encrypted",
                HeaderValue::from_static("true"),
            );
            Ok(r)
        }
        (&Method::PUT, Some("block")) => {
            let id = q(query, "blockid").ok_or_else(|| {
                Failure::new(400, "MissingRequiredQueryParameter", "A query parameter that's mandatory for this request is not specified: blockid.")
            })?;
            let md5 = svc
                .put_block(acct, container, name, &id, body_stream(body))
                .await?;
            let mut r = StatusCode::CREATED.into_response();
            let h = r.headers_mut();
            use base64::Engine as _;
            if let Ok(v) =
                HeaderValue::from_str(&base64::engine::general_purpose::STANDARD.encode(md5))
            {
                h.insert("content-md5", v);
            }
            h.insert(
                "x-ms-request-server-encrypted",
                HeaderValue::from_static("true"),
            );
            Ok(r)
        }
        (&Method::PUT, Some("blocklist")) => {
            let bytes = small_body(body, MAX_BLOCK_LIST).await?;
            let list = xml::parse_block_list(&bytes)
                .map_err(|e| Failure::new(400, e.code(), e.to_string()))?;
            let b = svc
                .put_block_list(
                    acct,
                    container,
                    name,
                    &list,
                    NewBlob {
                        headers: &blob_headers(headers, false),
                        metadata: &metadata(headers)?,
                        conditions: &conditions(headers)?,
                    },
                )
                .await?;
            let mut r = StatusCode::CREATED.into_response();
            etag_headers(r.headers_mut(), &b.etag, b.last_modified);
            r.headers_mut().insert(
                "x-ms-request-server-encrypted",
                HeaderValue::from_static("true"),
            );
            Ok(r)
        }
        (&Method::GET, Some("blocklist")) => {
            let (committed, staged) = svc.block_list(acct, container, name).await?;
            let which = q(query, "blocklisttype").unwrap_or_else(|| "committed".into());
            let staged = if which == "committed" {
                Vec::new()
            } else {
                staged
            };
            let committed = if which == "uncommitted" {
                Vec::new()
            } else {
                committed
            };
            Ok(xml_response(
                StatusCode::OK,
                xml::block_list_xml(&committed, &staged),
            ))
        }
        (&Method::PUT, Some("properties")) => {
            let _ = small_body(body, MAX_SMALL_BODY).await?;
            let b = svc
                .update_blob(
                    acct,
                    container,
                    name,
                    Some(blob_headers(headers, false)),
                    None,
                    &conditions(headers)?,
                )
                .await?;
            let mut r = StatusCode::OK.into_response();
            etag_headers(r.headers_mut(), &b.etag, b.last_modified);
            Ok(r)
        }
        (&Method::PUT, Some("metadata")) => {
            let _ = small_body(body, MAX_SMALL_BODY).await?;
            let meta = metadata(headers)?;
            let b = svc
                .update_blob(
                    acct,
                    container,
                    name,
                    None,
                    Some(&meta),
                    &conditions(headers)?,
                )
                .await?;
            let mut r = StatusCode::OK.into_response();
            etag_headers(r.headers_mut(), &b.etag, b.last_modified);
            r.headers_mut().insert(
                "x-ms-request-server-encrypted",
                HeaderValue::from_static("true"),
            );
            Ok(r)
        }
        (&Method::GET, Some("metadata")) => {
            let b = svc
                .blob_properties(acct, container, name, &conditions(headers)?)
                .await?;
            let mut r = StatusCode::OK.into_response();
            etag_headers(r.headers_mut(), &b.etag, b.last_modified);
            set_meta_headers(
                r.headers_mut(),
                &herald_blob::service::metadata_of(&b.metadata),
            );
            Ok(r)
        }
        (&Method::HEAD, None) => {
            let b = svc
                .blob_properties(acct, container, name, &conditions(headers)?)
                .await?;
            let mut r = StatusCode::OK.into_response();
            let h = r.headers_mut();
            blob_property_headers(h, &b);
            if let Some(m) = &b.content_md5
                && let Ok(v) = HeaderValue::from_str(m)
            {
                h.insert("content-md5", v);
            }
            h.insert(header::CONTENT_LENGTH, HeaderValue::from(b.size as u64));
            Ok(r)
        }
        (&Method::GET, None) => {
            let read = svc
                .get_blob(
                    acct,
                    container,
                    name,
                    range(headers)?,
                    &conditions(headers)?,
                )
                .await?;
            Ok(download(read))
        }
        (&Method::DELETE, None) => {
            svc.delete_blob(acct, container, name, &conditions(headers)?)
                .await?;
            let mut r = StatusCode::ACCEPTED.into_response();
            r.headers_mut().insert(
                "x-ms-delete-type-permanent",
                HeaderValue::from_static("true"),
            );
            Ok(r)
        }
        _ => Err(unsupported()),
    }
}

fn download(read: BlobRead) -> Response {
    let BlobRead { blob, range, body } = read;
    let size = blob.size as u64;
    let mut r = Response::new(Body::from_stream(body));
    let h = r.headers_mut();
    blob_property_headers(h, &blob);
    match range {
        Some((a, b)) => {
            *r.status_mut() = StatusCode::PARTIAL_CONTENT;
            let h = r.headers_mut();
            if let Ok(v) = HeaderValue::from_str(&format!("bytes {a}-{b}/{size}")) {
                h.insert(header::CONTENT_RANGE, v);
            }
            h.insert(header::CONTENT_LENGTH, HeaderValue::from(b - a + 1));
            // The whole blob's MD5, as Azure sends it on range reads.
            if let Some(m) = &blob.content_md5
                && let Ok(v) = HeaderValue::from_str(m)
            {
                h.insert("x-ms-blob-content-md5", v);
            }
        }
        None => {
            let h = r.headers_mut();
            h.insert(header::CONTENT_LENGTH, HeaderValue::from(size));
            if let Some(m) = &blob.content_md5
                && let Ok(v) = HeaderValue::from_str(m)
            {
                h.insert("content-md5", v);
            }
        }
    }
    r
}

/// `endpoint` for the management API's account DTO.
pub fn account_endpoint(st: &AppState, account: &str, headers: &HeaderMap) -> String {
    endpoint(st, account, headers)
}
