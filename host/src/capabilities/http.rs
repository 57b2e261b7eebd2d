//! `http`: outgoing requests, only to hosts on the installation's allow-list.
//!
//! The destination is checked twice: the URL's host against the allow-list, and every address it
//! resolves to (or the IP literal) against [`crate::net::is_public`] unless the operator allows
//! private addresses. The connection uses exactly the vetted addresses, so DNS cannot change its
//! answer in between. Redirects are not followed; no proxy, cookie or credential of the host is
//! used; the deadline is capped at the installation's call deadline; the response body is capped.

use super::{Capability, Context, HasCapabilities, HasView, View, grant_table, to_wit};
use crate::bindings::sluice::plugin::http::{self, Host, Request, Response};
use crate::bindings::types;
use crate::config::Collector;
use crate::net;
use reqwest::blocking::Client;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use reqwest::{Method, Url};
use serde::Deserialize;
use sluice_abi::limits::{ErrorKind, HostError};
use std::io::Read;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use wasmtime::component::Linker;

/// The `http` capability.
pub const CAPABILITY: Capability = Capability {
    name: "http",
    interface: "sluice:plugin/http",
};

/// Default cap of a response body, in bytes.
pub const DEFAULT_MAX_RESPONSE_BYTES: usize = 8 * 1024 * 1024;

/// Where one installation's requests may go (`[teams.plugins.http]`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Policy {
    /// Host names (or IP literals) requests may go to; `*.example.com` allows every subdomain.
    pub allow_hosts: Vec<String>,
    /// Whether loopback, private, link-local and other internal addresses are allowed.
    pub allow_private_addresses: bool,
    /// Largest response body accepted, in bytes.
    pub max_response_bytes: usize,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            allow_hosts: Vec::new(),
            allow_private_addresses: false,
            max_response_bytes: DEFAULT_MAX_RESPONSE_BYTES,
        }
    }
}

impl Policy {
    /// Reads the installation's `http` table at `key`; it must be there exactly when `http` is
    /// `granted`.
    pub(super) fn load(
        c: &mut Collector,
        key: &str,
        table: Option<&toml::Value>,
        granted: bool,
    ) -> Self {
        let needs = "`http.allow_hosts` must list the hosts it may reach";
        let Some(policy) = grant_table::<Self>(c, key, table, granted, &CAPABILITY, needs) else {
            return Self::default();
        };
        if policy.allow_hosts.is_empty() {
            c.add(
                format!("{key}.allow_hosts"),
                "is empty: the plugin could reach nothing",
            );
        }
        for (h, host) in policy.allow_hosts.iter().enumerate() {
            let pattern = host.strip_prefix("*.").unwrap_or(host);
            let ip = pattern.trim_start_matches('[').trim_end_matches(']');
            let name = !pattern.is_empty()
                && pattern
                    .chars()
                    .all(|ch| ch.is_ascii_alphanumeric() || "-.".contains(ch));
            if !name && ip.parse::<IpAddr>().is_err() {
                c.add(
                    format!("{key}.allow_hosts[{h}]"),
                    format!("{host:?} is not a host name, `*.domain` or IP address (no scheme, port or path)"),
                );
            }
        }
        if !(1..=256 << 20).contains(&policy.max_response_bytes) {
            c.add(
                format!("{key}.max_response_bytes"),
                "must be between 1 and 268435456",
            );
        }
        policy
    }

    /// Whether `host` (lowercase, IPv6 without brackets) is on the allow-list.
    fn allows_host(&self, host: &str) -> bool {
        self.allow_hosts.iter().any(|entry| {
            let entry = entry.to_ascii_lowercase();
            match entry.strip_prefix("*.") {
                Some(suffix) => host
                    .strip_suffix(suffix)
                    .is_some_and(|rest| rest.ends_with('.') && rest.len() > 1),
                None => host == entry.trim_start_matches('[').trim_end_matches(']'),
            }
        })
    }
}

/// Per-instance state: the client, built on first use for the policy it enforces.
#[derive(Default)]
pub struct HttpState {
    client: Option<(Policy, Client)>,
}

fn refused(message: impl Into<String>) -> HostError {
    HostError::new(ErrorKind::Refused, message)
}

/// A resolver that refuses names resolving to internal addresses.
struct Vetting;

/// Why the resolver refused a name.
#[derive(Debug, thiserror::Error)]
#[error("{name} resolves to {address}, which is not a public address")]
struct InternalAddress {
    name: String,
    address: IpAddr,
}

impl Resolve for Vetting {
    fn resolve(&self, name: Name) -> Resolving {
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            if let Some(bad) = addrs.iter().find(|a| !net::is_public(a.ip())) {
                return Err(Box::new(InternalAddress {
                    name: host,
                    address: bad.ip(),
                })
                    as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(addrs.into_iter()) as Addrs)
        })
    }
}

fn build_client(policy: &Policy) -> Result<Client, HostError> {
    let mut builder = Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("sluice/", env!("CARGO_PKG_VERSION")));
    if !policy.allow_private_addresses {
        builder = builder.dns_resolver(Arc::new(Vetting));
    }
    builder.build().map_err(|e| {
        HostError::new(
            ErrorKind::Unavailable,
            format!("cannot build an HTTP client: {e}"),
        )
    })
}

/// Checks `request` against the policy and returns its URL.
fn vet(policy: &Policy, request: &Request) -> Result<Url, HostError> {
    let invalid = |m: String| HostError::new(ErrorKind::Invalid, m);
    let url =
        Url::parse(&request.url).map_err(|e| invalid(format!("bad URL {:?}: {e}", request.url)))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(invalid(format!(
            "scheme `{}` is not http or https",
            url.scheme()
        )));
    }
    let host = match url.host() {
        Some(url::Host::Domain(domain)) => domain.to_ascii_lowercase(),
        Some(url::Host::Ipv4(ip)) => ip.to_string(),
        Some(url::Host::Ipv6(ip)) => ip.to_string(),
        None => return Err(invalid("the URL has no host".into())),
    };
    if !policy.allows_host(&host) {
        return Err(refused(format!(
            "host `{host}` is not on the installation's allow-list"
        )));
    }
    if let Ok(ip) = host.parse::<IpAddr>()
        && !policy.allow_private_addresses
        && !net::is_public(ip)
    {
        return Err(refused(format!("{ip} is not a public address")));
    }
    if request
        .headers
        .iter()
        .any(|(name, _)| name.eq_ignore_ascii_case("host"))
    {
        return Err(refused("the `Host` header cannot be set"));
    }
    Ok(url)
}

fn transport_error(error: reqwest::Error) -> HostError {
    let mut source: Option<&dyn std::error::Error> = Some(&error);
    while let Some(cause) = source {
        if let Some(internal) = cause.downcast_ref::<InternalAddress>() {
            return refused(internal.to_string());
        }
        source = cause.source();
    }
    let kind = if error.is_timeout() {
        ErrorKind::Timeout
    } else {
        ErrorKind::Unavailable
    };
    let mut message = error.to_string();
    let mut source = std::error::Error::source(&error);
    while let Some(cause) = source {
        message = format!("{message}: {cause}");
        source = cause.source();
    }
    HostError::new(kind, message)
}

/// Sends `request` for the installation of `ctx`, with `state`'s client.
fn fetch(state: &mut HttpState, ctx: &Context, request: Request) -> Result<Response, HostError> {
    ctx.check(&CAPABILITY)?;
    let policy = &ctx.grants.http;
    let url = vet(policy, &request)?;
    let method = Method::from_bytes(request.method.to_ascii_uppercase().as_bytes())
        .ok()
        .filter(|m| ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD"].contains(&m.as_str()))
        .ok_or_else(|| {
            HostError::new(
                ErrorKind::Invalid,
                format!("method `{}` is not supported", request.method),
            )
        })?;
    if state
        .client
        .as_ref()
        .is_none_or(|(built_for, _)| built_for != policy)
    {
        state.client = Some((policy.clone(), build_client(policy)?));
    }
    let Some((_, client)) = &state.client else {
        return Err(HostError::new(ErrorKind::Unavailable, "no HTTP client"));
    };
    let timeout = request.timeout_ms.map_or(ctx.timeout, |ms| {
        Duration::from_millis(u64::from(ms)).min(ctx.timeout)
    });
    let mut builder = client.request(method, url).timeout(timeout);
    for (name, value) in &request.headers {
        builder = builder.header(name, value);
    }
    if !request.body.is_empty() {
        builder = builder.body(request.body);
    }
    let response = builder.send().map_err(transport_error)?;
    let status = response.status().as_u16();
    let headers = response
        .headers()
        .iter()
        .map(|(name, value)| {
            (
                name.to_string(),
                String::from_utf8_lossy(value.as_bytes()).into_owned(),
            )
        })
        .collect();
    let cap = policy.max_response_bytes;
    let mut body = Vec::new();
    response
        .take(cap as u64 + 1)
        .read_to_end(&mut body)
        .map_err(|e| {
            HostError::new(
                ErrorKind::Unavailable,
                format!("reading the response failed: {e}"),
            )
        })?;
    if body.len() > cap {
        return Err(HostError::new(
            ErrorKind::TooLarge,
            format!("response body exceeds {cap} bytes"),
        ));
    }
    Ok(Response {
        status,
        headers,
        body,
    })
}

impl Host for View<'_, &mut HttpState> {
    fn fetch(&mut self, request: Request) -> Result<Response, types::HostError> {
        let (state, ctx, journal) = (&mut *self.state, self.ctx, self.journal);
        super::note(ctx, "http.fetch", &request);
        // The request itself goes to the call, so the journal gets a copy, and only if it
        // records.
        let args = if journal.is_on() {
            serde_json::to_value(&request).unwrap_or_default()
        } else {
            serde_json::Value::Null
        };
        journal.call("http.fetch", args, move || {
            if let Some(sandbox) = super::sandbox::intercepts_http(&ctx.services) {
                return ctx
                    .check(&CAPABILITY)
                    .and_then(|()| sandbox.fetch(&request))
                    .map_err(to_wit);
            }
            super::blocking(move || fetch(state, ctx, request)).map_err(to_wit)
        })
    }
}

/// Adds `http` to `linker`.
pub(super) fn add_to_linker<T: HasCapabilities>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
    http::add_to_linker::<T, HasView<&'static mut HttpState>>(linker, |data| {
        data.capabilities().http_view()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(hosts: &[&str]) -> Policy {
        Policy {
            allow_hosts: hosts.iter().map(|h| h.to_string()).collect(),
            ..Policy::default()
        }
    }

    fn get(url: &str) -> Request {
        Request {
            method: "GET".into(),
            url: url.into(),
            headers: vec![],
            body: vec![],
            timeout_ms: None,
        }
    }

    #[test]
    fn only_allowed_public_hosts_pass() {
        let p = policy(&[
            "api.example.com",
            "*.s3.example.net",
            "127.0.0.1",
            "169.254.169.254",
            "::1",
        ]);
        assert!(vet(&p, &get("https://api.example.com/x")).is_ok());
        assert!(vet(&p, &get("https://API.example.com/x")).is_ok());
        assert!(vet(&p, &get("https://bucket.s3.example.net/k")).is_ok());
        for (url, kind) in [
            ("https://s3.example.net/k", ErrorKind::Refused),
            ("https://evil.com/?api.example.com", ErrorKind::Refused),
            ("https://api.example.com.evil.com/", ErrorKind::Refused),
            ("http://127.0.0.1:8080/", ErrorKind::Refused),
            (
                "http://169.254.169.254/latest/meta-data/",
                ErrorKind::Refused,
            ),
            ("http://[::1]/", ErrorKind::Refused),
            ("ftp://api.example.com/", ErrorKind::Invalid),
            ("not a url", ErrorKind::Invalid),
        ] {
            assert_eq!(vet(&p, &get(url)).unwrap_err().kind, kind, "{url}");
        }
        let private = Policy {
            allow_private_addresses: true,
            ..p.clone()
        };
        assert!(vet(&private, &get("http://127.0.0.1:8080/")).is_ok());
        let mut spoof = get("https://api.example.com/");
        spoof.headers.push(("Host".into(), "internal".into()));
        assert_eq!(vet(&p, &spoof).unwrap_err().kind, ErrorKind::Refused);
    }
}
