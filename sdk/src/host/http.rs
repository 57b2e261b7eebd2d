//! `http`: outgoing requests to the hosts on the installation's allow-list (needs the `http`
//! grant). Natively, whatever [`crate::testing::Harness::with_http`] registered.

use super::HostError;

/// An outgoing request.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Request {
    /// `GET`, `POST`, `PUT`, `PATCH`, `DELETE` or `HEAD`.
    pub method: String,
    /// Absolute `http` or `https` URL.
    pub url: String,
    /// Headers (`Host` cannot be set).
    pub headers: Vec<(String, String)>,
    /// Body; empty for none.
    pub body: Vec<u8>,
    /// Deadline in milliseconds, capped by the host at the installation's call deadline.
    pub timeout_ms: Option<u32>,
}

impl Request {
    /// A `GET` of `url`.
    pub fn get(url: impl Into<String>) -> Self {
        Self {
            method: "GET".into(),
            url: url.into(),
            ..Self::default()
        }
    }

    /// A `POST` of `body` to `url`.
    pub fn post(url: impl Into<String>, body: impl Into<Vec<u8>>) -> Self {
        Self {
            method: "POST".into(),
            url: url.into(),
            body: body.into(),
            ..Self::default()
        }
    }

    /// Adds a header.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }
}

/// A response, whatever its status.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Headers.
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: Vec<u8>,
}

/// Sends `request` and waits for the whole response. Redirects are not followed.
pub fn fetch(request: &Request) -> Result<Response, HostError> {
    imp::fetch(request)
}

#[cfg(target_family = "wasm")]
mod imp {
    use super::super::{HostError, from_wit};
    use super::{Request, Response};
    use crate::bindings::sluice::plugin::http;

    pub fn fetch(request: &Request) -> Result<Response, HostError> {
        let response = http::fetch(&http::Request {
            method: request.method.clone(),
            url: request.url.clone(),
            headers: request.headers.clone(),
            body: request.body.clone(),
            timeout_ms: request.timeout_ms,
        })
        .map_err(from_wit)?;
        Ok(Response {
            status: response.status,
            headers: response.headers,
            body: response.body,
        })
    }
}

#[cfg(not(target_family = "wasm"))]
mod imp {
    use super::{HostError, Request, Response};
    use crate::testing::fakes;
    use sluice_abi::limits::ErrorKind;

    pub fn fetch(request: &Request) -> Result<Response, HostError> {
        fakes::using("http", |f| match &mut f.http {
            Some(respond) => respond(request),
            None => Err(HostError::new(
                ErrorKind::Refused,
                "no HTTP responder registered (Harness::with_http)",
            )),
        })
    }
}
