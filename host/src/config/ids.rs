//! Validated identifiers: project tokens and installation ids.

use std::borrow::Borrow;
use std::fmt;

/// Longest accepted project token, as in PostHog.
pub const MAX_TOKEN_LEN: usize = 64;

/// A project API key producers send (`api_key` / `token`), checked as PostHog checks it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Token(String);

impl Token {
    /// The token, or why it is not usable, in PostHog's words (`empty`, `too_long`,
    /// `not_ascii`, `personal_api_key`).
    pub fn parse(token: &str) -> Result<Self, &'static str> {
        if token.is_empty() {
            Err("empty")
        } else if token.len() > MAX_TOKEN_LEN {
            Err("too_long")
        } else if !token.is_ascii() {
            Err("not_ascii")
        } else if token.starts_with("phx_") {
            Err("personal_api_key")
        } else {
            Ok(Self(token.to_owned()))
        }
    }

    /// The token text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Borrow<str> for Token {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The id of a plugin installation within its team: letters, digits, `-` and `_`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct InstallationId(String);

impl InstallationId {
    /// The id, or why it is not acceptable.
    pub fn parse(id: &str) -> Result<Self, &'static str> {
        let valid = !id.is_empty()
            && id
                .chars()
                .all(|ch| ch.is_ascii_alphanumeric() || "-_".contains(ch));
        if valid {
            Ok(Self(id.to_owned()))
        } else {
            Err("must be non-empty and use only letters, digits, `-` and `_`")
        }
    }

    /// The id text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// How logs, metrics and commands name the installation: `team-<team>/<id>`.
    pub fn qualified(&self, team_id: u64) -> String {
        format!("team-{team_id}/{}", self.0)
    }
}

impl fmt::Display for InstallationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_checked_as_posthog_checks_them() {
        assert_eq!(Token::parse("phc_abc").unwrap().as_str(), "phc_abc");
        assert_eq!(Token::parse(""), Err("empty"));
        assert_eq!(Token::parse(&"x".repeat(65)), Err("too_long"));
        assert_eq!(Token::parse("phc_é"), Err("not_ascii"));
        assert_eq!(Token::parse("phx_personal"), Err("personal_api_key"));
    }

    #[test]
    fn installation_ids_are_plain_names() {
        assert_eq!(
            InstallationId::parse("geo-ip_2").unwrap().qualified(7),
            "team-7/geo-ip_2"
        );
        for bad in ["", "a/b", "a b", "ü"] {
            assert!(InstallationId::parse(bad).is_err(), "{bad:?}");
        }
    }
}
