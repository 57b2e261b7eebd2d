//! A GeoIP2-City-shaped database with one network, for the examples, the end-to-end tests and
//! the benchmarks: MaxMind's test network [`NETWORK`] is in a city of Östergötland, Sweden, and
//! nothing else is known. Integer fields have MaxMind's exact types (readers check them).

use serde::Serialize;
use std::collections::BTreeMap;
use std::io;
use std::path::Path;

/// The one network the database knows (MaxMind's own test databases use it for Linköping).
pub const NETWORK: &str = "89.160.20.112/28";
/// An address in [`NETWORK`].
pub const SAMPLE_IP: &str = "89.160.20.115";

#[derive(Serialize)]
struct Place<'a> {
    geoname_id: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    iso_code: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    code: Option<&'a str>,
    names: BTreeMap<&'a str, &'a str>,
}

#[derive(Serialize)]
struct Location<'a> {
    accuracy_radius: u16,
    latitude: f64,
    longitude: f64,
    time_zone: &'a str,
}

#[derive(Serialize)]
struct City<'a> {
    city: Place<'a>,
    continent: Place<'a>,
    country: Place<'a>,
    location: Location<'a>,
    subdivisions: Vec<Place<'a>>,
}

fn place<'a>(
    geoname_id: u32,
    iso_code: Option<&'a str>,
    code: Option<&'a str>,
    name: &'a str,
) -> Place<'a> {
    Place {
        geoname_id,
        iso_code,
        code,
        names: [("en", name)].into(),
    }
}

/// Writes the database to `path`, with [`NETWORK`] in `city`. Writes a temporary file, then
/// renames it, as a database updater does, so a reader never sees half a file.
pub fn write(path: &Path, city: &str) -> io::Result<()> {
    let record = City {
        city: place(2694762, None, None, city),
        continent: place(6255148, None, Some("EU"), "Europe"),
        country: place(2661886, Some("SE"), None, "Sweden"),
        location: Location {
            accuracy_radius: 76,
            latitude: 58.4167,
            longitude: 15.6167,
            time_zone: "Europe/Stockholm",
        },
        subdivisions: vec![place(2685867, Some("E"), None, "Östergötland County")],
    };
    let network: ipnet::IpNet = NETWORK.parse().map_err(io::Error::other)?;
    let mut writer = mmdb_writer::Writer::new("GeoIP2-City");
    writer
        .insert(network, &record)
        .map_err(|e| io::Error::other(e.to_string()))?;
    let bytes = writer
        .to_bytes()
        .map_err(|e| io::Error::other(e.to_string()))?;
    let partial = path.with_extension("partial");
    std::fs::write(&partial, bytes)?;
    std::fs::rename(partial, path)
}
