//! A GeoIP2-City-shaped test database, written by the e2e tests and the benchmark.

use std::path::Path;

/// Writes a GeoIP2-City-shaped database to `path` in which MaxMind's test network
/// 89.160.20.112/28 is in `city`, Östergötland, Sweden, and nothing else is known. Integer fields
/// have MaxMind's exact types (readers check them).
pub fn write(path: &Path, city: &str) {
    #[derive(serde::Serialize)]
    struct Place<'a> {
        geoname_id: u32,
        #[serde(skip_serializing_if = "Option::is_none")]
        iso_code: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        code: Option<&'a str>,
        names: std::collections::BTreeMap<&'a str, &'a str>,
    }
    #[derive(serde::Serialize)]
    struct Location<'a> {
        accuracy_radius: u16,
        latitude: f64,
        longitude: f64,
        time_zone: &'a str,
    }
    #[derive(serde::Serialize)]
    struct City<'a> {
        city: Place<'a>,
        continent: Place<'a>,
        country: Place<'a>,
        location: Location<'a>,
        subdivisions: Vec<Place<'a>>,
    }
    let place = |geoname_id, iso_code, code, name| Place {
        geoname_id,
        iso_code,
        code,
        names: [("en", name)].into(),
    };
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
    let mut writer = mmdb_writer::Writer::new("GeoIP2-City");
    writer
        .insert("89.160.20.112/28".parse::<ipnet::IpNet>().unwrap(), &record)
        .unwrap();
    // Write then rename, as a database updater does, so a reader never sees half a file.
    let partial = path.with_extension("partial");
    std::fs::write(&partial, writer.to_bytes().unwrap()).unwrap();
    std::fs::rename(partial, path).unwrap();
}
