//! `[admin]`: the operators' API (and page) on a listener of its own, behind a bearer token.

use super::Collector;
use serde::Deserialize;
use std::fmt;
use std::net::SocketAddr;

/// `[admin]`
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Address the admin API listens on; loopback by default. Env: `SLUICE_ADMIN_LISTEN`.
    pub listen: SocketAddr,
    /// The bearer token every admin request must carry. Env: `SLUICE_ADMIN_TOKEN`. Without one,
    /// the server makes one at start and keeps it in its data folder (`admin-token`, readable by
    /// its user only), where the commands on the same machine find it.
    pub token: Option<String>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8090)),
            token: None,
        }
    }
}

impl fmt::Debug for AdminConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdminConfig")
            .field("listen", &self.listen)
            .field("token", &self.token.as_ref().map(|_| "(redacted)"))
            .finish()
    }
}

/// The shortest token accepted: guessing it must be out of reach.
const MIN_TOKEN_LEN: usize = 16;

/// Reads `[admin]` with its environment overrides.
pub(super) fn load(
    c: &mut Collector,
    table: &toml::Table,
    env: &dyn Fn(&str) -> Option<String>,
) -> AdminConfig {
    let mut admin: AdminConfig = c.section(table, "admin");
    if let Some(listen) = env("SLUICE_ADMIN_LISTEN") {
        match listen.parse() {
            Ok(addr) => admin.listen = addr,
            Err(e) => c.add(
                "admin.listen",
                format!("SLUICE_ADMIN_LISTEN `{listen}` is not an address: {e}"),
            ),
        }
    }
    if let Some(token) = env("SLUICE_ADMIN_TOKEN") {
        admin.token = Some(token);
    }
    if admin
        .token
        .as_ref()
        .is_some_and(|t| t.len() < MIN_TOKEN_LEN || t.chars().any(|c| c.is_whitespace()))
    {
        c.add(
            "admin.token",
            format!("must be at least {MIN_TOKEN_LEN} characters, without spaces"),
        );
    }
    admin
}
