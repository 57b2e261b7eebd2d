//! `geoip`: where an IP address is, from the operator's MaxMind City database (needs the `geoip`
//! grant). Natively, whatever [`crate::testing::Harness::with_geoip`] registered.

use super::HostError;

/// A subdivision (state, province, county...).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Subdivision {
    /// ISO 3166-2 code without the country part.
    pub code: Option<String>,
    /// English name.
    pub name: Option<String>,
}

/// Where an address is, in English, as far as the database knows.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Location {
    /// City name.
    pub city_name: Option<String>,
    /// Country name.
    pub country_name: Option<String>,
    /// ISO 3166-1 alpha-2 country code.
    pub country_code: Option<String>,
    /// Continent name.
    pub continent_name: Option<String>,
    /// Two-letter continent code.
    pub continent_code: Option<String>,
    /// Postal code.
    pub postal_code: Option<String>,
    /// Latitude in degrees.
    pub latitude: Option<f64>,
    /// Longitude in degrees.
    pub longitude: Option<f64>,
    /// Radius in km that contains the address with 67% confidence.
    pub accuracy_radius: Option<u16>,
    /// IANA time zone.
    pub time_zone: Option<String>,
    /// Subdivisions, largest first.
    pub subdivisions: Vec<Subdivision>,
}

/// Locates `ip`. Private, reserved, unparseable and unknown addresses give `None`; an error means
/// the database is unavailable.
pub fn locate(ip: &str) -> Result<Option<Location>, HostError> {
    imp::locate(ip)
}

/// Which version of the database is loaded; it changes when the host loads a new version of
/// the file. Key what you keep of answers by it.
pub fn version() -> Result<u64, HostError> {
    imp::version()
}

#[cfg(target_family = "wasm")]
mod imp {
    use super::super::{HostError, from_wit};
    use super::{Location, Subdivision};
    use crate::bindings::sluice::plugin::geoip;

    pub fn version() -> Result<u64, HostError> {
        geoip::version().map_err(from_wit)
    }

    pub fn locate(ip: &str) -> Result<Option<Location>, HostError> {
        let found = geoip::locate(ip).map_err(from_wit)?;
        Ok(found.map(|l| Location {
            city_name: l.city_name,
            country_name: l.country_name,
            country_code: l.country_code,
            continent_name: l.continent_name,
            continent_code: l.continent_code,
            postal_code: l.postal_code,
            latitude: l.latitude,
            longitude: l.longitude,
            accuracy_radius: l.accuracy_radius,
            time_zone: l.time_zone,
            subdivisions: l
                .subdivisions
                .into_iter()
                .map(|s| Subdivision {
                    code: s.code,
                    name: s.name,
                })
                .collect(),
        }))
    }
}

#[cfg(not(target_family = "wasm"))]
mod imp {
    use super::{HostError, Location};
    use crate::testing::fakes;
    use sluice_abi::limits::ErrorKind;

    fn unregistered() -> HostError {
        HostError::new(
            ErrorKind::Unavailable,
            "no GeoIP lookup registered (Harness::with_geoip)",
        )
    }

    pub fn locate(ip: &str) -> Result<Option<Location>, HostError> {
        fakes::using("geoip", |f| match &f.geoip {
            Some(locate) => Ok(locate(ip)),
            None => Err(unregistered()),
        })
    }

    pub fn version() -> Result<u64, HostError> {
        fakes::using("geoip", |f| match &f.geoip {
            Some(_) => Ok(f.geoip_version),
            None => Err(unregistered()),
        })
    }
}
