//! The OAuth 2.0 token endpoint's request and error shapes, as Entra ID's
//! v2.0 endpoint has them (`error`, `error_description` starting with the
//! AADSTS code, `error_codes`, ...), so MSAL and azure-identity surface
//! Herald's refusals the way they surface Azure's.

use serde::Serialize;

/// Largest form body the token endpoint reads.
pub const MAX_FORM: usize = 16 * 1024;

/// A refused token request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OAuthError {
    /// HTTP status: 401 for a bad client credential, else 400.
    pub status: u16,
    /// The OAuth error code (`invalid_client`, `invalid_request`, ...).
    pub error: &'static str,
    /// The AADSTS number.
    pub code: u32,
    /// Human text, starting with `AADSTS{code}: `.
    pub description: String,
}

/// The JSON body Entra ID answers a refused token request with.
#[derive(Serialize)]
pub struct OAuthErrorBody {
    error: &'static str,
    error_description: String,
    error_codes: [u32; 1],
    timestamp: String,
    trace_id: String,
    correlation_id: String,
    error_uri: String,
}

impl OAuthError {
    fn new(status: u16, error: &'static str, code: u32, text: impl AsRef<str>) -> Self {
        let text = text.as_ref();
        let description = if text.starts_with("AADSTS") {
            text.to_owned()
        } else {
            format!("AADSTS{code}: {text}")
        };
        Self {
            status,
            error,
            code,
            description,
        }
    }

    /// A missing or malformed parameter.
    pub fn invalid_request(code: u32, text: impl AsRef<str>) -> Self {
        Self::new(400, "invalid_request", code, text)
    }

    /// A wrong, expired or missing client credential.
    pub fn invalid_client(code: u32, text: impl AsRef<str>) -> Self {
        Self::new(401, "invalid_client", code, text)
    }

    /// An unknown client id.
    pub fn unauthorized_client(code: u32, text: impl AsRef<str>) -> Self {
        Self::new(400, "unauthorized_client", code, text)
    }

    /// A scope Herald has no resource for.
    pub fn invalid_scope(code: u32, text: impl AsRef<str>) -> Self {
        Self::new(400, "invalid_scope", code, text)
    }

    /// A resource Herald does not serve.
    pub fn invalid_resource(text: impl AsRef<str>) -> Self {
        Self::new(400, "invalid_resource", 500011, text)
    }

    /// A tenant other than this installation's.
    pub fn new_invalid_tenant(tenant: &str) -> Self {
        Self::new(
            400,
            "invalid_request",
            90002,
            format!(
                "Tenant '{tenant}' not found. This Herald installation's tenant is shown by 'herald status'."
            ),
        )
    }

    /// The body Entra ID sends.
    pub fn body(&self) -> OAuthErrorBody {
        let id = uuid::Uuid::new_v4().to_string();
        OAuthErrorBody {
            error: self.error,
            error_description: format!(
                "{} Trace ID: {id} Correlation ID: {id} Timestamp: {}",
                self.description,
                chrono::Utc::now().format("%Y-%m-%d %H:%M:%SZ")
            ),
            error_codes: [self.code],
            timestamp: chrono::Utc::now().format("%Y-%m-%d %H:%M:%SZ").to_string(),
            trace_id: id.clone(),
            correlation_id: id,
            error_uri: format!("https://login.microsoftonline.com/error?code={}", self.code),
        }
    }
}

/// A parsed client-credentials request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRequest {
    pub client_id: String,
    pub client_secret: String,
    pub scope: String,
}

/// Parses the form body (and an `Authorization: Basic` header, for
/// `client_secret_basic`) of a token request.
pub fn parse_token_request(form: &[u8], basic: Option<&str>) -> Result<TokenRequest, OAuthError> {
    if form.len() > MAX_FORM {
        return Err(OAuthError::invalid_request(
            90020,
            format!("The request body is larger than {MAX_FORM} bytes."),
        ));
    }
    let mut grant = None;
    let (mut id, mut secret, mut scope, mut assertion) = (None, None, None, false);
    for (k, v) in form_urlencoded::parse(form) {
        match &*k {
            "grant_type" => grant = Some(v.into_owned()),
            "client_id" => id = Some(v.into_owned()),
            "client_secret" => secret = Some(v.into_owned()),
            "scope" => scope = Some(v.into_owned()),
            "client_assertion" => assertion = true,
            _ => {}
        }
    }
    if let Some(b) = basic {
        use base64::Engine;
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(b.trim())
            .ok()
            .and_then(|d| String::from_utf8(d).ok())
            .ok_or_else(|| {
                OAuthError::invalid_client(7000218, "The Basic authorization header is not valid base64 of client_id:client_secret.")
            })?;
        let (i, s) = decoded.split_once(':').ok_or_else(|| {
            OAuthError::invalid_client(
                7000218,
                "The Basic authorization header must hold client_id:client_secret.",
            )
        })?;
        let dec = |t: &str| percent_decode(t);
        id.get_or_insert(dec(i));
        secret.get_or_insert(dec(s));
    }
    let grant = grant.ok_or_else(|| {
        OAuthError::invalid_request(
            900144,
            "The request body must contain the following parameter: 'grant_type'.",
        )
    })?;
    if grant != "client_credentials" {
        return Err(OAuthError::new(
            400,
            "unsupported_grant_type",
            70003,
            format!(
                "The app requested an unsupported grant type '{grant}'. Herald issues tokens with client_credentials only."
            ),
        ));
    }
    let client_id = id.filter(|s| !s.is_empty()).ok_or_else(|| {
        OAuthError::invalid_request(
            900144,
            "The request body must contain the following parameter: 'client_id'.",
        )
    })?;
    let client_secret = match secret.filter(|s| !s.is_empty()) {
        Some(s) => s,
        None if assertion => {
            return Err(OAuthError::invalid_client(
                700027,
                "Client assertions (certificate credentials) are not supported by Herald; use a client secret.",
            ));
        }
        None => {
            return Err(OAuthError::invalid_client(
                7000218,
                "The request body must contain the following parameter: 'client_assertion' or 'client_secret'.",
            ));
        }
    };
    let scope = scope.filter(|s| !s.trim().is_empty()).ok_or_else(|| {
        OAuthError::invalid_request(
            900144,
            "The request body must contain the following parameter: 'scope'.",
        )
    })?;
    Ok(TokenRequest {
        client_id,
        client_secret,
        scope,
    })
}

fn percent_decode(t: &str) -> String {
    form_urlencoded::parse(format!("v={t}").as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_post_and_basic() {
        let r = parse_token_request(
            b"grant_type=client_credentials&client_id=a&client_secret=s%7E1&scope=https%3A%2F%2Fvault.azure.net%2F.default",
            None,
        )
        .unwrap();
        assert_eq!(
            (r.client_id.as_str(), r.client_secret.as_str()),
            ("a", "s~1")
        );
        assert_eq!(r.scope, "https://vault.azure.net/.default");
        let basic = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, "a:s");
        let r = parse_token_request(
            b"grant_type=client_credentials&scope=x/.default",
            Some(&basic),
        )
        .unwrap();
        assert_eq!(r.client_secret, "s");
    }

    #[test]
    fn refusals_have_entra_codes() {
        let e = parse_token_request(b"client_id=a", None).unwrap_err();
        assert_eq!(
            (e.status, e.error, e.code),
            (400, "invalid_request", 900144)
        );
        let e = parse_token_request(b"grant_type=password&client_id=a", None).unwrap_err();
        assert_eq!(e.error, "unsupported_grant_type");
        let e = parse_token_request(b"grant_type=client_credentials&client_id=a&scope=s", None)
            .unwrap_err();
        assert_eq!((e.status, e.error), (401, "invalid_client"));
        let big = vec![b'a'; MAX_FORM + 1];
        assert_eq!(parse_token_request(&big, None).unwrap_err().status, 400);
        let body = serde_json::to_value(e.body()).unwrap();
        assert_eq!(body["error_codes"][0], 7000218);
        assert!(
            body["error_description"]
                .as_str()
                .unwrap()
                .starts_with("AADSTS7000218: ")
        );
    }

    proptest! {
        #[test]
        fn any_form_gets_a_4xx_or_parses(body in proptest::collection::vec(any::<u8>(), 0..512), basic in proptest::option::of(".{0,64}")) {
            if let Err(e) = parse_token_request(&body, basic.as_deref()) {
                prop_assert!(e.status == 400 || e.status == 401);
            }
        }
    }
}
