//! Google service-account OAuth2: a JWT bearer assertion signed RS256 with the key, exchanged at
//! the key's `token_uri` for an access token, kept until shortly before it expires.

use serde::{Deserialize, Serialize};
use sluice_sdk::PluginError;
use sluice_sdk::host::http::{self, Request};

/// The scope the token is asked for.
const SCOPE: &str = "https://www.googleapis.com/auth/bigquery";
/// A token is renewed this many seconds before it expires.
const EARLY_SECONDS: u64 = 60;

/// The parts of a service-account key the plugin uses.
#[derive(Clone, Deserialize)]
pub struct ServiceAccount {
    /// Who signs (`iss`).
    pub client_email: String,
    /// The RSA private key, PEM.
    pub private_key: String,
    /// Where tokens are issued (`aud`).
    #[serde(default = "default_token_uri")]
    pub token_uri: String,
    /// The key's project.
    #[serde(default)]
    pub project_id: String,
}

fn default_token_uri() -> String {
    "https://oauth2.googleapis.com/token".into()
}

impl std::fmt::Debug for ServiceAccount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceAccount")
            .field("client_email", &self.client_email)
            .field("token_uri", &self.token_uri)
            .finish_non_exhaustive()
    }
}

impl ServiceAccount {
    /// Reads a key file's JSON; the private key must be a usable RSA key.
    pub fn parse(json: &str) -> Result<Self, PluginError> {
        let account: Self = serde_json::from_str(json)
            .map_err(|e| PluginError::new(format!("key_json is not a service account key: {e}")))?;
        jsonwebtoken::EncodingKey::from_rsa_pem(account.private_key.as_bytes())
            .map_err(|e| PluginError::new(format!("key_json has no usable private key: {e}")))?;
        Ok(account)
    }
}

#[derive(Serialize)]
struct Claims<'a> {
    iss: &'a str,
    scope: &'a str,
    aud: &'a str,
    iat: u64,
    exp: u64,
}

#[derive(Deserialize)]
struct Granted {
    access_token: String,
    #[serde(default = "default_lifetime")]
    expires_in: u64,
}

fn default_lifetime() -> u64 {
    3600
}

/// The account and its current token.
#[derive(Debug)]
pub struct Auth {
    account: ServiceAccount,
    token: Option<(String, u64)>,
}

fn now_seconds() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Auth {
    /// No token yet.
    pub fn new(account: ServiceAccount) -> Self {
        Self {
            account,
            token: None,
        }
    }

    /// A valid access token: the kept one, unless it is about to expire or `fresh` asks for a
    /// new one (after a `401`).
    pub fn token(&mut self, fresh: bool) -> Result<String, PluginError> {
        let now = now_seconds();
        if let Some((token, expires)) = &self.token
            && !fresh
            && now + EARLY_SECONDS < *expires
        {
            return Ok(token.clone());
        }
        let granted = self.request(now)?;
        self.token = Some((granted.access_token.clone(), now + granted.expires_in));
        Ok(granted.access_token)
    }

    fn request(&self, now: u64) -> Result<Granted, PluginError> {
        let account = &self.account;
        let claims = Claims {
            iss: &account.client_email,
            scope: SCOPE,
            aud: &account.token_uri,
            iat: now,
            exp: now + 3600,
        };
        let key = jsonwebtoken::EncodingKey::from_rsa_pem(account.private_key.as_bytes())
            .map_err(|e| PluginError::new(format!("cannot use the private key: {e}")))?;
        let assertion = jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256),
            &claims,
            &key,
        )
        .map_err(|e| PluginError::new(format!("cannot sign the token request: {e}")))?;
        let body = format!(
            "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer&assertion={assertion}"
        );
        let request = Request::post(&account.token_uri, body)
            .header("Content-Type", "application/x-www-form-urlencoded");
        let response = http::fetch(&request).map_err(|e| {
            PluginError::from(e).context(format!("cannot reach {}", account.token_uri))
        })?;
        let json = serde_json::from_slice(&response.body).unwrap_or_default();
        if response.status != 200 {
            return Err(super::api_error("token request", response.status, &json));
        }
        serde_json::from_value(json)
            .map_err(|e| PluginError::retryable(format!("unexpected token response: {e}")))
    }
}
